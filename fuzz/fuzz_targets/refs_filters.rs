//! Reference, platform, digest and filter parsers: each input goes to all.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = stevedore_fuzz::targets::reference(data) {
        panic!("reference: {broken}");
    }
    if let Err(broken) = stevedore_fuzz::targets::filter(data) {
        panic!("filter: {broken}");
    }
});
