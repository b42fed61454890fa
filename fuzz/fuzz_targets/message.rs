//! `Message` decoding over arbitrary bytes: never panics; whatever decodes encodes
//! back to a frame that decodes to the same message; the shared decode (bodies sliced
//! from the frame, as link readers decode) reads exactly what the copying one reads,
//! and refuses exactly what it refuses; the frame sent as parts (a large body as its
//! own, as the node sends it) is the same bytes; checking its signatures ahead of the
//! engine (as link readers do) never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use por_protocol::messages::{decode_frame, decode_frame_shared, encode_frame, encode_frame_parts};
use por_protocol::{Deployment, NodeId};

fuzz_target!(|data: &[u8]| {
    let copied = decode_frame(data);
    let shared = decode_frame_shared(&bytes::Bytes::copy_from_slice(data));
    assert_eq!(copied.is_ok(), shared.is_ok(), "{copied:?} vs {shared:?}");
    let Ok(message) = copied else {
        return;
    };
    let shared = shared.ok();
    assert_eq!(shared.as_ref(), Some(&message));
    message.preverify(&Deployment::test(), &NodeId([7; 32]));
    let again = encode_frame(&message).expect("a decoded message encodes");
    if let Some(shared) = &shared {
        let parts = encode_frame_parts(shared).expect("a decoded message encodes in parts");
        assert_eq!(parts.concat(), again, "the parts are not the frame");
    }
    assert_eq!(decode_frame(&again).ok(), Some(message));
});
