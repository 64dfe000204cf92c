#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| retrain::fuzz_targets::safetensors_source(data));
