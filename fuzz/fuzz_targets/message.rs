//! `Message` decoding over arbitrary bytes: never panics; whatever decodes encodes
//! back to a frame that decodes to the same message; the shared decode (bodies sliced
//! from the frame, as link readers decode) reads exactly what the copying one reads,
//! and refuses exactly what it refuses; checking its signatures ahead of the engine
//! (as link readers do) never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use por_protocol::messages::{decode_frame, decode_frame_shared, encode_frame};
use por_protocol::{Deployment, NodeId};

fuzz_target!(|data: &[u8]| {
    let copied = decode_frame(data);
    let shared = decode_frame_shared(&bytes::Bytes::copy_from_slice(data));
    assert_eq!(copied.is_ok(), shared.is_ok(), "{copied:?} vs {shared:?}");
    let Ok(message) = copied else {
        return;
    };
    assert_eq!(shared.ok().as_ref(), Some(&message));
    message.preverify(&Deployment::test(), &NodeId([7; 32]));
    let again = encode_frame(&message).expect("a decoded message encodes");
    assert_eq!(decode_frame(&again).ok(), Some(message));
});
