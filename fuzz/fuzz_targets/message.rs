//! `Message` decoding over arbitrary bytes: never panics; whatever decodes encodes
//! back to a frame that decodes to the same message; checking its signatures ahead
//! of the engine (as link readers do) never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use por_protocol::messages::{decode_frame, encode_frame};
use por_protocol::{Deployment, NodeId};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = decode_frame(data) else {
        return;
    };
    message.preverify(&Deployment::test(), &NodeId([7; 32]));
    let again = encode_frame(&message).expect("a decoded message encodes");
    assert_eq!(decode_frame(&again).ok(), Some(message));
});
