//! The file layer's verified decoding: an arbitrary encoding of arbitrary ranges of a
//! known 40 KiB blob either is refused or yields exactly the blob's bytes at their
//! offsets (nothing unverified ever comes out).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use por_files::blob::{chunk_ranges, decode, outboard};
use por_files::Root;

const SIZE: usize = 40 * 1024 + 123;

fn blob() -> &'static (Vec<u8>, Root) {
    static BLOB: OnceLock<(Vec<u8>, Root)> = OnceLock::new();
    BLOB.get_or_init(|| {
        let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
        let mut ob = Vec::new();
        let root = outboard(&data[..], SIZE as u64, &mut ob).expect("outboard");
        (data, root)
    })
}

fuzz_target!(|input: &[u8]| {
    let [a, b, rest @ ..] = input else {
        return;
    };
    let (data, root) = blob();
    let (start, end) = (
        u64::from(*a % 48),
        u64::from(*a % 48) + u64::from(*b % 48) + 1,
    );
    let Ok(ranges) = chunk_ranges(&[(start, end)]) else {
        return;
    };
    if let Ok(verified) = decode(*root, SIZE as u64, &ranges, rest) {
        for v in verified {
            let at = usize::try_from(v.offset).expect("offset");
            assert_eq!(
                &data[at..at + v.data.len()],
                &v.data[..],
                "unverified bytes"
            );
        }
    }
});
