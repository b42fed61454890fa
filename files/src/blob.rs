//! Content addressing: BLAKE3 roots, verified range encodings (`bao-tree`, 16 KiB
//! chunk groups) and the pieces a transfer asks for.
//!
//! A blob's root is the plain BLAKE3 hash of its bytes. The store keeps, beside each
//! blob, its pre-order outboard: the hash pairs of the tree down to 16 KiB chunk groups
//! (64 bytes per 16 KiB, 0.4 % of the blob). The encoding of a range is the parent
//! hash pairs from the root down to the range, interleaved with the range's data in
//! pre-order, exactly as `bao_tree::io::sync::encode_ranges_validated` writes it; a
//! client checks it against the root alone with `DecodeResponseIter`, so a verified
//! piece never depends on another.

use std::fmt;
use std::io::Cursor;

use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::{DecodeResponseIter, ReadAt};
use bao_tree::io::BaoContentItem;
use bao_tree::iter::BaoChunk;
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use serde::{Deserialize, Serialize};

use crate::error::FilesError;

/// Chunk groups of 2^4 BLAKE3 chunks: 16 KiB, as iroh-blobs uses.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);

/// A BLAKE3 chunk: the unit ranges are given in.
pub const CHUNK_BYTES: u64 = 1024;

/// What one request asks for: 512 KiB (32 chunk groups), so that its encoding stays
/// well inside a PoR response (1 MiB).
pub const PIECE_BYTES: u64 = 512 * 1024;

/// The most ranges one `get` may name.
pub const MAX_RANGES: usize = 64;

/// A blob's name: the BLAKE3 hash of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Root(#[serde(with = "por_protocol::fixed")] pub [u8; 32]);

impl Root {
    /// The root of `bytes`.
    pub fn of(bytes: &[u8]) -> Root {
        Root(*bao_tree::blake3::hash(bytes).as_bytes())
    }

    /// As BLAKE3's type.
    pub fn hash(&self) -> bao_tree::blake3::Hash {
        bao_tree::blake3::Hash::from_bytes(self.0)
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        por_protocol::hex::encode(&self.0)
    }

    /// Parses 64 hex digits.
    pub fn parse(s: &str) -> Result<Root, FilesError> {
        por_protocol::hex::decode::<32>(s)
            .map(Root)
            .ok_or_else(|| FilesError::BadRoot(s.chars().take(80).collect()))
    }
}

impl fmt::Display for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Root({})", &self.to_hex()[..12])
    }
}

/// The tree of a blob of `size` bytes.
pub fn tree(size: u64) -> BaoTree {
    BaoTree::new(size, BLOCK_SIZE)
}

/// How many pieces a blob of `size` bytes has (an empty blob has one, empty).
pub fn pieces(size: u64) -> u64 {
    size.div_ceil(PIECE_BYTES).max(1)
}

/// The byte range of piece `i`.
pub fn piece_bytes(size: u64, i: u64) -> (u64, u64) {
    let start = i.saturating_mul(PIECE_BYTES).min(size);
    (start, start.saturating_add(PIECE_BYTES).min(size))
}

/// The chunk range of piece `i`, as a `get` names it.
pub fn piece_chunks(i: u64) -> (u64, u64) {
    let per = PIECE_BYTES / CHUNK_BYTES;
    (
        i.saturating_mul(per),
        i.saturating_add(1).saturating_mul(per),
    )
}

/// The chunk ranges `(start, end)` name, or an error if they are not sorted, disjoint
/// and non-empty, or too many.
pub fn chunk_ranges(ranges: &[(u64, u64)]) -> Result<ChunkRanges, FilesError> {
    if ranges.is_empty() || ranges.len() > MAX_RANGES {
        return Err(FilesError::BadRanges(format!(
            "{} ranges (1 to {MAX_RANGES} allowed)",
            ranges.len()
        )));
    }
    let mut out = ChunkRanges::empty();
    let mut last_end = 0u64;
    for (i, &(start, end)) in ranges.iter().enumerate() {
        if start >= end || (i > 0 && start < last_end) {
            return Err(FilesError::BadRanges(format!(
                "range {start}..{end} is empty, unsorted or overlapping"
            )));
        }
        last_end = end;
        out |= ChunkRanges::from(ChunkNum(start)..ChunkNum(end));
    }
    Ok(out)
}

/// The exact length of the encoding of `ranges` of a blob of `size` bytes: 64 bytes
/// per parent pair on the way, the whole data of every chunk group the ranges cover,
/// and of a group they cover in part, its parents down to the chunks asked for and
/// those chunks (the encoder hashes the group's other chunks itself).
pub fn encoded_len(size: u64, ranges: &ChunkRanges) -> u64 {
    // The encoder's own walk (pre-order, down to the chunk groups) over the ranges as
    // it canonicalises them: a range reaching the last chunk runs to the end.
    let end = ChunkNum::chunks(size);
    let mut canonical = ChunkRanges::empty();
    for r in ranges.iter() {
        let (s, e) = match r {
            range_collections::range_set::RangeSetRange::Range(r) => (*r.start, Some(*r.end)),
            range_collections::range_set::RangeSetRange::RangeFrom(r) => (*r.start, None),
        };
        if size > 0 && s >= end {
            continue;
        }
        canonical |= match e {
            Some(e) if e < end => ChunkRanges::from(s..e),
            _ => ChunkRanges::from(s..),
        };
    }
    tree(size)
        .ranges_pre_order_chunks_iter_ref(&canonical, 0)
        .map(|c| match c {
            BaoChunk::Parent { .. } => 64,
            BaoChunk::Leaf {
                start_chunk,
                size,
                ranges,
                ..
            } => group_len(start_chunk, size as u64, ranges),
        })
        .sum()
}

/// The length of one chunk group's part of an encoding: the group's `size` bytes from
/// `start` when `query` covers it all, else what bao-tree's encoder writes for a group
/// covered in part (`encode_selected_rec`, walked here without hashing): each parent
/// on the way down to the chunks asked for, and those chunks.
fn group_len(start: ChunkNum, size: u64, query: &range_collections::RangeSetRef<ChunkNum>) -> u64 {
    if query.is_empty() {
        return 0;
    }
    if query.is_all() || size <= CHUNK_BYTES {
        return size;
    }
    // The subtree's halves, as the encoder splits it: the left one a power of two of
    // chunks, the right one the rest.
    let chunks = size.div_ceil(CHUNK_BYTES).next_power_of_two();
    let mid = chunks / 2;
    let mid_bytes = mid * CHUNK_BYTES;
    let (left, right) = split_query(query, start, start + mid);
    64 + group_len(start, mid_bytes, left) + group_len(start + mid, size - mid_bytes, right)
}

/// `query` split at `mid` for a subtree starting at `start`, each half given as "all"
/// when it covers its subtree whole (as bao-tree's own split does, so that `is_all`
/// says whether to go further down).
fn split_query(
    query: &range_collections::RangeSetRef<ChunkNum>,
    start: ChunkNum,
    mid: ChunkNum,
) -> (
    &range_collections::RangeSetRef<ChunkNum>,
    &range_collections::RangeSetRef<ChunkNum>,
) {
    const ALL: &[ChunkNum] = &[ChunkNum(0)];
    let all = || range_collections::RangeSetRef::new_unchecked(ALL);
    let (mut a, mut b) = query.split(mid);
    if a.boundaries().len() == 1 && a.boundaries()[0] <= start {
        a = all();
    }
    if b.boundaries().len() == 1 && b.boundaries()[0] <= mid {
        b = all();
    }
    (a, b)
}

/// Encodes `ranges` of the blob in `data` with its pre-order `outboard`, checking the
/// data against the outboard as it goes (a corrupted store is refused, not served).
pub fn encode(
    root: Root,
    size: u64,
    data: impl ReadAt,
    outboard: impl ReadAt,
    ranges: &ChunkRanges,
) -> Result<Vec<u8>, FilesError> {
    // Sized up front: a piece's encoding is written into one allocation.
    let mut out = Vec::with_capacity(usize::try_from(encoded_len(size, ranges)).unwrap_or(0));
    encode_into(root, size, data, outboard, ranges, &mut out)?;
    Ok(out)
}

/// [`encode`], appending to `out` (which a provider has sized, with the response's
/// header already in it).
pub fn encode_into(
    root: Root,
    size: u64,
    data: impl ReadAt,
    outboard: impl ReadAt,
    ranges: &ChunkRanges,
    out: &mut Vec<u8>,
) -> Result<(), FilesError> {
    let ob = PreOrderOutboard {
        root: root.hash(),
        tree: tree(size),
        data: outboard,
    };
    bao_tree::io::sync::encode_ranges_validated(data, ob, ranges, out)
        .map_err(|e| FilesError::Corrupt(format!("{root}: {e}")))
}

/// One verified run of bytes at `offset` of the blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Where in the blob.
    pub offset: u64,
    /// The bytes.
    pub data: bytes::Bytes,
}

/// Checks `encoded` against `root` for `ranges` of a blob of `size` bytes and returns
/// the verified data. Nothing is returned unless the whole encoding verifies and
/// nothing follows it.
pub fn decode(
    root: Root,
    size: u64,
    ranges: &ChunkRanges,
    encoded: &[u8],
) -> Result<Vec<Verified>, FilesError> {
    // A range from past the end asks the encoder for the last chunk (a proof of the
    // size); providers refuse it, and so does the decoder, so that every encoding it
    // takes has the length `encoded_len` gives.
    let chunks = ChunkNum::chunks(size).0.max(1);
    if let Some(start) = ranges
        .boundaries()
        .iter()
        .step_by(2)
        .find(|s| s.0 >= chunks)
    {
        return Err(FilesError::BadRanges(format!(
            "range from chunk {} past the blob's {chunks} chunks",
            start.0
        )));
    }
    let expected = encoded_len(size, ranges);
    if encoded.len() as u64 != expected {
        return Err(FilesError::Mismatch(format!(
            "encoding of {} bytes, {expected} expected for these ranges",
            encoded.len()
        )));
    }
    let mut out = Vec::new();
    let mut reader = Cursor::new(encoded);
    for item in DecodeResponseIter::new(root.hash(), tree(size), &mut reader, ranges) {
        match item.map_err(|e| FilesError::Mismatch(e.to_string()))? {
            BaoContentItem::Parent(_) => {}
            BaoContentItem::Leaf(leaf) => out.push(Verified {
                offset: leaf.offset,
                data: leaf.data,
            }),
        }
    }
    Ok(out)
}

/// The pre-order outboard of `data` (read once, streaming) and its root.
pub fn outboard(
    data: impl std::io::Read,
    size: u64,
    outboard: impl bao_tree::io::sync::WriteAt,
) -> std::io::Result<Root> {
    let mut ob = PreOrderOutboard {
        root: bao_tree::blake3::hash(&[]),
        tree: tree(size),
        data: outboard,
    };
    let root = bao_tree::io::sync::outboard(data, ob.tree, &mut ob)?;
    Ok(Root(*root.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn setup(n: usize) -> (Vec<u8>, Vec<u8>, Root) {
        let data = blob(n);
        let mut ob = Vec::new();
        let root = outboard(&data[..], n as u64, &mut ob).unwrap();
        (data, ob, root)
    }

    /// Every range, aligned to chunk groups or not, one or several, up to or past the
    /// end: the encoder writes exactly `encoded_len` bytes, and they decode to exactly
    /// the blob's bytes asked for (a range ending inside a group used to be priced and
    /// checked as the whole group, so its honest encoding was refused).
    #[test]
    fn encoded_len_is_exact_for_any_ranges() {
        for n in [
            1usize,
            1024,
            1500,
            16 * 1024,
            40 * 1024 + 123,
            70 * 1024 + 1,
        ] {
            let (data, ob, root) = setup(n);
            let chunks = (n as u64).div_ceil(CHUNK_BYTES);
            let mut cases = Vec::new();
            for s in 0..chunks {
                for e in [s + 1, s + 2, s + 5, s + 16, s + 17, chunks, chunks + 3] {
                    if e > s {
                        cases.push(vec![(s, e)]);
                    }
                }
            }
            if chunks > 40 {
                cases.push(vec![(0, 1), (3, 4), (20, 33), (40, 100)]);
            }
            for case in cases {
                let ranges = chunk_ranges(&case).unwrap();
                let enc = encode(root, n as u64, &data[..], &ob[..], &ranges).unwrap();
                assert_eq!(
                    enc.len() as u64,
                    encoded_len(n as u64, &ranges),
                    "{n}: {case:?}"
                );
                let got = decode(root, n as u64, &ranges, &enc).unwrap();
                assert!(!got.is_empty());
                for v in got {
                    let at = v.offset as usize;
                    assert_eq!(&data[at..at + v.data.len()], &v.data[..], "{n}: {case:?}");
                }
            }
        }
    }

    /// A range from past the blob's end is refused by name, whatever the encoding.
    #[test]
    fn ranges_from_past_the_end_are_refused() {
        let (data, ob, root) = setup(1500);
        let ranges = chunk_ranges(&[(0, 1), (2, 3)]).unwrap();
        let enc = encode(root, 1500, &data[..], &ob[..], &ranges).unwrap();
        let e = decode(root, 1500, &ranges, &enc).unwrap_err();
        assert!(e.to_string().contains("past the blob's 2 chunks"), "{e}");
    }

    /// The `files_decode` fuzz target's seeds: `[a, b, encoding of chunks a..a+b+1]` of
    /// its 40 KiB blob, for a few ranges (without them the fuzzer never gets past the
    /// length check). Each seed decodes; with `POR_WRITE_FUZZ_SEEDS=1` they are written to
    /// `fuzz/corpus/files_decode`.
    #[test]
    fn fuzz_seeds_for_files_decode_decode() {
        const SIZE: usize = 40 * 1024 + 123;
        let (data, ob, root) = setup(SIZE);
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/files_decode");
        let write = std::env::var("POR_WRITE_FUZZ_SEEDS").is_ok();
        for (a, b) in [
            (0u8, 0u8),
            (0, 47),
            (5, 2),
            (15, 1),
            (16, 0),
            (31, 9),
            (40, 0),
            (40, 7),
        ] {
            let start = u64::from(a % 48);
            let ranges = chunk_ranges(&[(start, start + u64::from(b % 48) + 1)]).unwrap();
            let enc = encode(root, SIZE as u64, &data[..], &ob[..], &ranges).unwrap();
            assert!(!decode(root, SIZE as u64, &ranges, &enc).unwrap().is_empty());
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                let seed: Vec<u8> = [a, b].into_iter().chain(enc).collect();
                std::fs::write(dir.join(format!("seed-{a}-{b}")), seed).unwrap();
            }
        }
    }

    #[test]
    fn roots_are_plain_blake3_and_pieces_round_trip() {
        let n = 3 * PIECE_BYTES as usize + 12_345;
        let (data, ob, root) = setup(n);
        assert_eq!(root, Root::of(&data));
        assert_eq!(pieces(n as u64), 4);
        let mut got = vec![0u8; n];
        for i in 0..pieces(n as u64) {
            let ranges = chunk_ranges(&[piece_chunks(i)]).unwrap();
            let enc = encode(root, n as u64, &data[..], &ob[..], &ranges).unwrap();
            assert_eq!(enc.len() as u64, encoded_len(n as u64, &ranges));
            for v in decode(root, n as u64, &ranges, &enc).unwrap() {
                got[v.offset as usize..v.offset as usize + v.data.len()].copy_from_slice(&v.data);
            }
            let (s, e) = piece_bytes(n as u64, i);
            assert_eq!(&got[s as usize..e as usize], &data[s as usize..e as usize]);
        }
        assert_eq!(got, data);
    }

    #[test]
    fn wrong_truncated_oversized_and_misplaced_encodings_are_refused() {
        let n = 2 * PIECE_BYTES as usize;
        let (data, ob, root) = setup(n);
        let r0 = chunk_ranges(&[piece_chunks(0)]).unwrap();
        let r1 = chunk_ranges(&[piece_chunks(1)]).unwrap();
        let enc = encode(root, n as u64, &data[..], &ob[..], &r0).unwrap();
        let mut flipped = enc.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            decode(root, n as u64, &r0, &flipped),
            Err(FilesError::Mismatch(_))
        ));
        assert!(decode(root, n as u64, &r0, &enc[..enc.len() - 1]).is_err());
        let mut longer = enc.clone();
        longer.push(0);
        assert!(decode(root, n as u64, &r0, &longer).is_err());
        // The encoding of piece 0 offered for piece 1.
        assert!(decode(root, n as u64, &r1, &enc).is_err());
        // Another root.
        assert!(decode(Root([9; 32]), n as u64, &r0, &enc).is_err());
    }

    #[test]
    fn a_store_whose_data_was_corrupted_refuses_to_encode() {
        let n = PIECE_BYTES as usize;
        let (mut data, ob, root) = setup(n);
        data[100] ^= 0xff;
        let r = chunk_ranges(&[piece_chunks(0)]).unwrap();
        assert!(matches!(
            encode(root, n as u64, &data[..], &ob[..], &r),
            Err(FilesError::Corrupt(_))
        ));
    }

    #[test]
    fn ranges_must_be_sorted_disjoint_and_few() {
        assert!(chunk_ranges(&[]).is_err());
        assert!(chunk_ranges(&[(5, 5)]).is_err());
        assert!(chunk_ranges(&[(10, 20), (15, 30)]).is_err());
        assert!(chunk_ranges(&[(0, 1); MAX_RANGES + 1]).is_err());
        assert!(chunk_ranges(&[(0, 4), (8, 16)]).is_ok());
    }

    #[test]
    fn an_empty_blob_is_one_empty_piece() {
        let (data, ob, root) = setup(0);
        let r = chunk_ranges(&[piece_chunks(0)]).unwrap();
        let enc = encode(root, 0, &data[..], &ob[..], &r).unwrap();
        let v = decode(root, 0, &r, &enc).unwrap();
        assert!(v.iter().all(|v| v.data.is_empty()));
    }
}
