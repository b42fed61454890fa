//! Every signed type's verification over arbitrary bytes (decoded as that type, then
//! its batch root and signature checked as the engine and the contract do): never
//! panics, and a value that verifies stops verifying when any bit of its signature
//! changes (the seeds are genuinely signed; nothing else should verify).
#![no_main]

use libfuzzer_sys::fuzz_target;
use por_protocol::crypto::verify;
use por_protocol::types::{RequestHeader, SignedResponse, SignedSeverNotice, SignedUpdate};
use por_protocol::{wire, Deployment, NodeId, Signature};

/// Whether the value verifies with `sig`, and with `sig` altered at `bit`.
fn both(check: impl Fn(&Signature) -> bool, sig: &Signature, bit: usize) -> (bool, bool) {
    let mut altered = *sig;
    altered.0[bit / 8 % 64] ^= 1 << (bit % 8);
    (check(sig), check(&altered))
}

fuzz_target!(|data: &[u8]| {
    let [which, bit, bytes @ ..] = data else {
        return;
    };
    let d = Deployment::test();
    let bit = usize::from(*bit) * 2;
    // The signer the engine would check against: the update's payer and the
    // response's server come from context, so the seeds' own keys are tried.
    let signers = [1u8, 2, 3].map(|i| por_protocol::Keypair::from_seed([i; 32]).id());
    let verdicts: Vec<(bool, bool)> = match which % 4 {
        0 => wire::decode::<SignedUpdate>(bytes)
            .ok()
            .and_then(|su| su.batch().map(|b| (su, b)))
            .map(|(su, b)| {
                signers
                    .iter()
                    .map(|s| both(|sig| verify(&d, s, &b, sig).is_ok(), &su.sig, bit))
                    .collect()
            })
            .unwrap_or_default(),
        1 => wire::decode::<SignedResponse>(bytes)
            .ok()
            .and_then(|sr| sr.batch().map(|b| (sr, b)))
            .map(|(sr, b)| {
                signers
                    .iter()
                    .map(|s| both(|sig| verify(&d, s, &b, sig).is_ok(), &sr.sig, bit))
                    .collect()
            })
            .unwrap_or_default(),
        2 => wire::decode::<SignedSeverNotice>(bytes)
            .ok()
            .map(|n| {
                let signer: NodeId = n.notice.severer;
                vec![both(
                    |sig| verify(&d, &signer, &n.notice, sig).is_ok(),
                    &n.sig,
                    bit,
                )]
            })
            .unwrap_or_default(),
        _ => wire::decode::<RequestHeader>(bytes)
            .ok()
            .and_then(|h| h.client_batch().map(|b| (h, b)))
            .map(|(h, b)| {
                vec![both(
                    |sig| verify(&d, &h.core.client, &b, sig).is_ok(),
                    &h.client_sig,
                    bit,
                )]
            })
            .unwrap_or_default(),
    };
    for (genuine, altered) in verdicts {
        assert!(
            !(genuine && altered),
            "a signature still verified with a bit changed"
        );
    }
});
