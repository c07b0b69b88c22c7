#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| crvs_fuzz::record_chunk(data));
