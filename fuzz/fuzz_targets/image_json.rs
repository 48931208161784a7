//! Manifest, index and config JSON: each input is tried as every media type.
#![no_main]
use std::sync::LazyLock;
use stevedore_fuzz::targets::{SpecJson, SPEC_MEDIA_TYPES};

static TARGET: LazyLock<SpecJson> = LazyLock::new(SpecJson::default);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for variant in 0..SPEC_MEDIA_TYPES.len() as u64 {
        if let Err(broken) = TARGET.exec(data, variant) {
            panic!("image_json: {broken}");
        }
    }
});
