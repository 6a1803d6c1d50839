//! Arbitrary bytes as a Kafka request frame (after its size field), through the decoders the
//! server uses: prefix, API and version check, request header, body. The oracle is "no panic,
//! no abort". Half the inputs get a supported API key and version forced into their prefix, so
//! the body decoders see most of the garbage.
//!
//! The decoders reserve vector capacity from counts in the frame; like the `spate` binary, this
//! target installs `ReservingAlloc`, without which a tiny frame aborts the process.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spate::kafka::{decode_request, versions::SUPPORTED};

#[global_allocator]
static ALLOC: spate::alloc::ReservingAlloc = spate::alloc::ReservingAlloc;

fuzz_target!(|data: &[u8]| {
    let _ = decode_request(data);
    if data.len() >= 8 {
        let (key, min, max) = SUPPORTED[data[0] as usize % SUPPORTED.len()];
        let span = (max - min + 1) as u8;
        let version = min + (data[1] % span) as i16;
        let mut forced = data.to_vec();
        forced[..2].copy_from_slice(&(key as i16).to_be_bytes());
        forced[2..4].copy_from_slice(&version.to_be_bytes());
        if let Ok(decoded) = decode_request(&forced) {
            assert_eq!(decoded, key);
        }
    }
});
