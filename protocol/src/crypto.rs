//! Identities, hashes and domain-separated signatures.
//!
//! Every signed type implements [`Signable`]: its signing bytes are a per-type domain
//! tag, then the [`Deployment`] the signature is for, then the canonical wire encoding
//! of the value (see [`crate::wire`]). A signature made for one contract deployment
//! (one account on one network) therefore verifies in no other.
//! The contract verifies exactly these bytes with `env::ed25519_verify`, so the types
//! here build for `wasm32-unknown-unknown` without the `crypto` feature.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::wire::{self, WireError};

/// A node's identity: its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(#[serde(with = "crate::fixed")] pub [u8; 32]);

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl std::fmt::Display for NodeId {
    /// The first eight hex digits, enough to tell nodes apart in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Hash(#[serde(with = "crate::fixed")] pub [u8; 32]);

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hash(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

impl Hash {
    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Hash {
        Hash(Sha256::digest(data).into())
    }

    /// The hash of a request or response body, which `RequestCore::body_hash` and
    /// `ResponseBody::body_hash` commit to: BLAKE3 (32 bytes). Bodies are the one
    /// thing every hop hashes in full (a file piece is 512 KiB), and BLAKE3 is several
    /// times faster than SHA-256 there; everything signed is still tagged SHA-256, so
    /// the contract, which never sees a body, needs no BLAKE3.
    #[cfg(feature = "engine")]
    pub fn of_body(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }

    /// SHA-256 of a domain tag followed by `data`.
    pub fn tagged(tag: &[u8], data: &[u8]) -> Hash {
        let mut h = Sha256::new();
        h.update(tag);
        h.update(data);
        Hash(h.finalize().into())
    }
}

/// The contract deployment a signature is for: `SHA-256("por/v1/deployment" ||
/// network || 0 || contract_account)`. Every signed type's signing bytes carry it, so
/// channel states and notices signed for one deployment (channel ids restart at 1 in
/// each) can never be replayed against another. The contract computes it at `new`
/// from its own account and the network named in its config; nodes read it from the
/// contract's `get_deployment` view.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Deployment(pub Hash);

impl Deployment {
    /// The deployment of contract account `contract` on `network`.
    pub fn of(network: &str, contract: &str) -> Deployment {
        let mut data = Vec::with_capacity(
            network
                .len()
                .saturating_add(contract.len())
                .saturating_add(2),
        );
        data.extend_from_slice(network.as_bytes());
        data.push(0);
        data.extend_from_slice(contract.as_bytes());
        Deployment(Hash::tagged(b"por/v1/deployment", &data))
    }

    /// The deployment simulations and unit tests sign for.
    pub fn test() -> Deployment {
        Deployment::of("test", "por.test")
    }

    /// Lower-case hex of the hash, as the contract's `get_deployment` view returns it.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0 .0)
    }

    /// Parses [`Deployment::to_hex`]'s form.
    pub fn from_hex(s: &str) -> Option<Deployment> {
        crate::hex::decode(s).map(|b| Deployment(Hash(b)))
    }
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Deployment({})", &self.to_hex()[..12])
    }
}

/// An ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Signature;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Signature, E> {
                let arr: [u8; 64] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Signature(arr))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Signature, E> {
                self.visit_bytes(&v)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Signature, A::Error> {
                let mut arr = [0u8; 64];
                for (i, slot) in arr.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(Signature(arr))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A type that is signed with a domain tag of its own.
pub trait Signable: Serialize {
    /// The domain-separation tag, unique per signed type and protocol version.
    const DOMAIN: &'static [u8];

    /// The exact bytes that are signed: `DOMAIN || deployment || canonical_encoding(self)`.
    fn signing_bytes(&self, deployment: &Deployment) -> Result<Vec<u8>, WireError> {
        let body = wire::encode(self)?;
        let mut out = Vec::with_capacity(
            Self::DOMAIN
                .len()
                .saturating_add(32)
                .saturating_add(body.len()),
        );
        out.extend_from_slice(Self::DOMAIN);
        out.extend_from_slice(&deployment.0 .0);
        out.extend_from_slice(&body);
        Ok(out)
    }
}

/// A failed signature check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The public key bytes are not a valid ed25519 point.
    #[error("invalid public key")]
    BadKey,
    /// The signature does not verify under the claimed key and domain.
    #[error("signature does not verify")]
    BadSignature,
    /// The value could not be encoded for signing.
    #[error("value could not be encoded for signing")]
    Encoding,
}

#[cfg(feature = "crypto")]
mod keys {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

    /// A node's signing key. Held in memory only by the node that owns it.
    #[derive(Clone)]
    pub struct Keypair {
        signing: SigningKey,
        id: NodeId,
    }

    impl std::fmt::Debug for Keypair {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Keypair({})", self.id)
        }
    }

    impl Keypair {
        /// The key whose 32-byte secret seed is `seed`.
        pub fn from_seed(seed: [u8; 32]) -> Keypair {
            let signing = SigningKey::from_bytes(&seed);
            let id = NodeId(signing.verifying_key().to_bytes());
            Keypair { signing, id }
        }

        /// The secret seed, for writing a key file.
        pub fn seed(&self) -> [u8; 32] {
            self.signing.to_bytes()
        }

        /// The public identity.
        pub fn id(&self) -> NodeId {
            self.id
        }

        /// Signs raw bytes (already domain-tagged).
        pub fn sign_bytes(&self, bytes: &[u8]) -> Signature {
            Signature(self.signing.sign(bytes).to_bytes())
        }

        /// Signs `value` under its domain tag, for `deployment`.
        pub fn sign<T: Signable>(
            &self,
            deployment: &Deployment,
            value: &T,
        ) -> Result<Signature, CryptoError> {
            let bytes = value
                .signing_bytes(deployment)
                .map_err(|_| CryptoError::Encoding)?;
            Ok(self.sign_bytes(&bytes))
        }
    }

    /// Most decompressed keys kept; the cache starts afresh when full.
    const KEY_CACHE: usize = 4096;

    /// The decompressed key of `id`. Decompressing a point costs a field inversion, a
    /// fifth of a verification; nodes see the same few keys over and over, so the
    /// decompressed forms are memoised (a pure function: results are identical with or
    /// without the cache).
    fn verifying_key(id: &NodeId) -> Result<VerifyingKey, CryptoError> {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        static CACHE: OnceLock<Mutex<HashMap<[u8; 32], VerifyingKey>>> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(k) = cache.lock().ok().and_then(|c| c.get(&id.0).copied()) {
            return Ok(k);
        }
        let key = VerifyingKey::from_bytes(&id.0).map_err(|_| CryptoError::BadKey)?;
        if let Ok(mut c) = cache.lock() {
            if c.len() >= KEY_CACHE {
                c.clear();
            }
            c.insert(id.0, key);
        }
        Ok(key)
    }

    /// Verifies `sig` by `signer` over raw (already domain-tagged) bytes, strictly
    /// (no malleable or small-order encodings).
    pub fn verify_bytes(signer: &NodeId, bytes: &[u8], sig: &Signature) -> Result<(), CryptoError> {
        if verified::take(signer, bytes, sig) {
            return Ok(());
        }
        let key = verifying_key(signer)?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        key.verify_strict(bytes, &sig)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Verifies `sig` by `signer` over `value` ahead of time, on whatever thread calls
    /// it, so that the engine's own check of the same signature over the same bytes is
    /// a lookup. Returns whether it verified (a failure is not remembered: the engine
    /// checks again and refuses).
    pub fn preverify<T: Signable>(
        deployment: &Deployment,
        signer: &NodeId,
        value: &T,
        sig: &Signature,
    ) -> bool {
        let Ok(bytes) = value.signing_bytes(deployment) else {
            return false;
        };
        let ok = verifying_key(signer).is_ok_and(|key| {
            key.verify_strict(&bytes, &ed25519_dalek::Signature::from_bytes(&sig.0))
                .is_ok()
        });
        if ok {
            verified::put(signer, &bytes, sig);
        }
        ok
    }

    /// Signatures checked ahead of time by [`preverify`]: `sig` → (signer, SHA-256 of
    /// the signed bytes). Each entry answers one later check of exactly that signer,
    /// bytes and signature, then is gone; the memo starts afresh when full. It only
    /// ever holds signatures that verified, so it changes no result, only where the
    /// work is done.
    mod verified {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};

        use sha2::{Digest, Sha256};

        use crate::crypto::{NodeId, Signature};

        const MAX: usize = 1 << 16;
        type Memo = HashMap<[u8; 64], ([u8; 32], [u8; 32])>;

        fn memo() -> &'static Mutex<Memo> {
            static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
            MEMO.get_or_init(|| Mutex::new(HashMap::new()))
        }

        fn digest(bytes: &[u8]) -> [u8; 32] {
            Sha256::digest(bytes).into()
        }

        pub(super) fn put(signer: &NodeId, bytes: &[u8], sig: &Signature) {
            let entry = (signer.0, digest(bytes));
            if let Ok(mut m) = memo().lock() {
                if m.len() >= MAX {
                    m.clear();
                }
                m.insert(sig.0, entry);
            }
        }

        pub(super) fn take(signer: &NodeId, bytes: &[u8], sig: &Signature) -> bool {
            let Ok(mut m) = memo().lock() else {
                return false;
            };
            if m.is_empty() {
                return false;
            }
            match m.get(&sig.0) {
                Some(&(who, hash)) if who == signer.0 && hash == digest(bytes) => {
                    m.remove(&sig.0);
                    true
                }
                _ => false,
            }
        }
    }

    /// Verifies `sig` by `signer` over `value` like [`verify`], remembering success:
    /// for signatures that several messages share (a server's signature over a batch
    /// of responses), so that the batch's first member costs a verification and the
    /// rest a lookup. Only verified signatures are remembered, so the result is always
    /// the same as [`verify`]'s.
    pub fn verify_cached<T: Signable>(
        deployment: &Deployment,
        signer: &NodeId,
        value: &T,
        sig: &Signature,
    ) -> Result<(), CryptoError> {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        /// Most shared signatures remembered; the cache starts afresh when full.
        const MAX: usize = 4096;
        type Seen = HashMap<[u8; 64], ([u8; 32], [u8; 32])>;
        static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
        let seen = SEEN.get_or_init(|| Mutex::new(HashMap::new()));
        let bytes = value
            .signing_bytes(deployment)
            .map_err(|_| CryptoError::Encoding)?;
        let entry = (signer.0, <[u8; 32]>::from(Sha256::digest(&bytes)));
        if seen
            .lock()
            .is_ok_and(|s| s.get(&sig.0).is_some_and(|e| *e == entry))
        {
            return Ok(());
        }
        verify_bytes(signer, &bytes, sig)?;
        if let Ok(mut s) = seen.lock() {
            if s.len() >= MAX {
                s.clear();
            }
            s.insert(sig.0, entry);
        }
        Ok(())
    }

    /// Verifies `sig` by `signer` over `value` under its domain tag, for `deployment`.
    pub fn verify<T: Signable>(
        deployment: &Deployment,
        signer: &NodeId,
        value: &T,
        sig: &Signature,
    ) -> Result<(), CryptoError> {
        let bytes = value
            .signing_bytes(deployment)
            .map_err(|_| CryptoError::Encoding)?;
        verify_bytes(signer, &bytes, sig)
    }
}

#[cfg(feature = "crypto")]
pub use keys::{preverify, verify, verify_bytes, verify_cached, Keypair};

#[cfg(all(test, feature = "crypto"))]
mod tests {
    use super::*;

    const D: Deployment = Deployment(Hash([3; 32]));

    #[derive(Serialize)]
    struct A(u64);
    impl Signable for A {
        const DOMAIN: &'static [u8] = b"test/a";
    }
    #[derive(Serialize)]
    struct B(u64);
    impl Signable for B {
        const DOMAIN: &'static [u8] = b"test/b";
    }

    #[test]
    fn preverification_changes_no_result() {
        let k = Keypair::from_seed([9; 32]);
        let other = Keypair::from_seed([10; 32]);
        let sig = k.sign(&D, &A(41)).unwrap();
        assert!(preverify(&D, &k.id(), &A(41), &sig));
        // The memo answers only the same signer, bytes and signature.
        assert_eq!(
            verify(&D, &other.id(), &A(41), &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            verify(&D, &k.id(), &A(42), &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            verify(&D, &k.id(), &B(41), &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(verify(&D, &k.id(), &A(41), &sig), Ok(()));
        // A forgery is not remembered: it fails ahead of time and again later.
        let mut forged = k.sign(&D, &A(43)).unwrap();
        forged.0[3] ^= 1;
        assert!(!preverify(&D, &k.id(), &A(43), &forged));
        assert_eq!(
            verify(&D, &k.id(), &A(43), &forged),
            Err(CryptoError::BadSignature)
        );
        // And a real signature still verifies after its memo entry is used.
        assert_eq!(verify(&D, &k.id(), &A(41), &sig), Ok(()));
    }

    #[test]
    fn signatures_are_domain_separated() {
        let k = Keypair::from_seed([7; 32]);
        let sig = k.sign(&D, &A(5)).unwrap();
        assert_eq!(verify(&D, &k.id(), &A(5), &sig), Ok(()));
        // Same encoding, different domain: refused.
        assert_eq!(
            verify(&D, &k.id(), &B(5), &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            verify(&D, &k.id(), &A(6), &sig),
            Err(CryptoError::BadSignature)
        );
        let other = Keypair::from_seed([8; 32]);
        assert_eq!(
            verify(&D, &other.id(), &A(5), &sig),
            Err(CryptoError::BadSignature)
        );
    }

    #[test]
    fn signatures_are_bound_to_their_deployment() {
        let k = Keypair::from_seed([7; 32]);
        let testnet = Deployment::of("testnet", "por.testnet");
        let sig = k.sign(&testnet, &A(5)).unwrap();
        assert_eq!(verify(&testnet, &k.id(), &A(5), &sig), Ok(()));
        for other in [
            Deployment::of("mainnet", "por.testnet"),
            Deployment::of("testnet", "por2.testnet"),
            Deployment::of("testnetp", "or.testnet"),
        ] {
            assert_ne!(other, testnet);
            assert_eq!(
                verify(&other, &k.id(), &A(5), &sig),
                Err(CryptoError::BadSignature)
            );
        }
        assert_eq!(Deployment::from_hex(&testnet.to_hex()), Some(testnet));
        assert_eq!(Deployment::from_hex("zz"), None);
    }

    #[test]
    fn signature_serde_roundtrip_and_length_check() {
        let k = Keypair::from_seed([1; 32]);
        let sig = k.sign(&D, &A(1)).unwrap();
        let bytes = wire::encode(&sig).unwrap();
        let back: Signature = wire::decode(&bytes).unwrap();
        assert_eq!(back, sig);
        let short = wire::encode(&vec![0u8; 10]).unwrap();
        assert!(wire::decode::<Signature>(&short).is_err());
    }
}
