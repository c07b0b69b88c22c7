#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| crvs_fuzz::change_set(data));
