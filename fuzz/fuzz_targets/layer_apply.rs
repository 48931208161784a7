//! Layer apply into a sandbox whose sentinel sibling must stay untouched.
//! A tar input gets its header checksums fixed first (else nearly every
//! mutation dies at the checksum); a hash of the input picks the whiteout
//! mode and whether the tar is gzipped on the way. Input that starts with
//! the gzip magic is gunzipped as it is.
#![no_main]
use std::sync::LazyLock;
use stevedore_fuzz::targets::TarApply;
use stevedore_fuzz::{fnv, tarfix};

static TARGET: LazyLock<TarApply> =
    LazyLock::new(|| TarApply::new().expect("create the layer apply sandbox"));

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let variant = fnv(data);
    let mut input = data.to_vec();
    if !input.starts_with(&[0x1f, 0x8b]) {
        tarfix::fix_checksums(&mut input);
    }
    if let Err(broken) = TARGET.exec(&input, variant, variant & 2 != 0) {
        panic!("layer_apply: {broken}");
    }
});
