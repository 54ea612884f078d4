//! Raw bytes into every decoder that sees network input: the signed-slice decoder, the
//! presence/leave decoder, and the sync codec's request and response readers (on the raw
//! bytes and on the bytes wrapped in a valid 4-byte big-endian length frame).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| truffle_actors::testing::decode_everything(data));
