//! The transport's frame decoder over arbitrary bytes fed in arbitrary chunks: it
//! never panics, never yields a frame over its bound, and yields the same frames
//! whatever the chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use por_transport::frame::FrameDecoder;

const MAX: usize = 4096;

fn frames(data: &[u8], chunk: usize) -> (Vec<(u32, Vec<u8>)>, bool) {
    let mut d = FrameDecoder::new(MAX);
    let mut out = Vec::new();
    for part in data.chunks(chunk.max(1)) {
        d.push(part);
        loop {
            match d.next_frame() {
                Ok(Some((stream, payload))) => {
                    assert!(payload.len() <= MAX, "a frame over the bound");
                    out.push((stream, payload.to_vec()));
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let whole = frames(rest, rest.len());
    let chunked = frames(rest, usize::from(chunk % 17) + 1);
    assert_eq!(whole, chunked, "chunking changed what was decoded");
});
