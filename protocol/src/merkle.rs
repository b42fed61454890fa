//! Merkle batches: one signature over many values.
//!
//! A signer that has several values to sign at once (a server answering a burst of
//! requests) signs the root of a Merkle tree over their leaf hashes, and each value
//! travels with its [`MerkleProof`]. A checker recomputes the root from the leaf and
//! the proof and verifies the one signature over the root, which it has usually just
//! verified for the previous member of the same batch (see
//! [`crate::crypto::verify_cached`]). A batch of one is a root equal to its leaf and an
//! empty proof.
//!
//! The tree is built bottom-up; a level with an odd number of nodes promotes its last
//! node unchanged. Inner nodes are `SHA-256("por/v1/merkle-node" || left || right)`;
//! leaves are hashed under the domain of the signed type by the caller, so a leaf can
//! never be taken for an inner node or for a leaf of another type.

use serde::{Deserialize, Serialize};

use crate::crypto::Hash;

/// The most leaves in one batch (and so at most 16 siblings in a proof).
pub const MAX_LEAVES: u32 = 1 << 16;

/// Where one leaf sits in a signed batch, and the hashes needed to rebuild the root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleProof {
    /// How many leaves the batch has (signed together with the root).
    pub leaves: u32,
    /// This leaf's position, from 0.
    pub index: u32,
    /// Sibling hashes from the leaf's level up, skipping levels where the node on the
    /// path was promoted without a sibling.
    pub siblings: Vec<Hash>,
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(&left.0);
    both[32..].copy_from_slice(&right.0);
    Hash::tagged(b"por/v1/merkle-node", &both)
}

impl MerkleProof {
    /// The root that `leaf` at this proof's position leads to, or `None` if the proof
    /// is malformed (no leaves, too many, an index out of range, or the wrong number of
    /// siblings).
    pub fn root_of(&self, leaf: Hash) -> Option<Hash> {
        if self.leaves == 0 || self.leaves > MAX_LEAVES || self.index >= self.leaves {
            return None;
        }
        let (mut n, mut i, mut h) = (self.leaves, self.index, leaf);
        let mut siblings = self.siblings.iter();
        while n > 1 {
            let promoted = n % 2 == 1 && i.checked_add(1) == Some(n);
            if !promoted {
                let s = siblings.next()?;
                h = if i % 2 == 0 { node(&h, s) } else { node(s, &h) };
            }
            i /= 2;
            n = n.div_ceil(2);
        }
        // Every sibling must have been used: no trailing data rides along.
        siblings.next().is_none().then_some(h)
    }
}

/// The root over `leaves` and each leaf's proof, in order. `None` if there are no
/// leaves or more than [`MAX_LEAVES`].
pub fn build(leaves: &[Hash]) -> Option<(Hash, Vec<MerkleProof>)> {
    let count = u32::try_from(leaves.len())
        .ok()
        .filter(|c| (1..=MAX_LEAVES).contains(c))?;
    let mut levels: Vec<Vec<Hash>> = vec![leaves.to_vec()];
    while let Some(level) = levels.last().filter(|l| l.len() > 1) {
        let up = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node(l, r),
                [only] => *only,
                _ => Hash::default(),
            })
            .collect();
        levels.push(up);
    }
    let root = *levels.last()?.first()?;
    let proofs = (0..count)
        .map(|index| {
            let mut siblings = Vec::new();
            let mut i = index as usize;
            for level in &levels[..levels.len().saturating_sub(1)] {
                if let Some(s) = level.get(i ^ 1) {
                    siblings.push(*s);
                }
                i /= 2;
            }
            MerkleProof {
                leaves: count,
                index,
                siblings,
            }
        })
        .collect();
    Some((root, proofs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| Hash::of(&i.to_le_bytes())).collect()
    }

    #[test]
    fn every_leaf_of_every_size_leads_to_the_root() {
        for n in 1..=40 {
            let l = leaves(n);
            let (root, proofs) = build(&l).unwrap();
            assert_eq!(proofs.len(), n);
            for (leaf, proof) in l.iter().zip(&proofs) {
                assert_eq!(proof.root_of(*leaf), Some(root), "n={n} i={}", proof.index);
            }
        }
        // A batch of one: the root is the leaf.
        let l = leaves(1);
        assert_eq!(build(&l).unwrap().0, l[0]);
        assert!(build(&[]).is_none());
    }

    #[test]
    fn a_proof_fits_one_leaf_one_place_and_one_batch() {
        let l = leaves(7);
        let (root, proofs) = build(&l).unwrap();
        // Another leaf, or the same leaf at another index, leads elsewhere.
        assert_ne!(proofs[2].root_of(l[3]), Some(root));
        let mut moved = proofs[2].clone();
        moved.index = 3;
        assert_ne!(moved.root_of(l[2]), Some(root));
        // A different batch size changes the shape: refused or another root.
        let mut resized = proofs[6].clone();
        resized.leaves = 8;
        assert_ne!(resized.root_of(l[6]), Some(root));
        // Malformed proofs are refused outright.
        let mut extra = proofs[0].clone();
        extra.siblings.push(Hash::default());
        assert_eq!(extra.root_of(l[0]), None);
        let mut short = proofs[0].clone();
        short.siblings.pop();
        assert_eq!(short.root_of(l[0]), None);
        let out_of_range = MerkleProof {
            leaves: 7,
            index: 7,
            siblings: proofs[6].siblings.clone(),
        };
        assert_eq!(out_of_range.root_of(l[6]), None);
        let empty = MerkleProof {
            leaves: 0,
            index: 0,
            siblings: vec![],
        };
        assert_eq!(empty.root_of(l[0]), None);
    }
}
