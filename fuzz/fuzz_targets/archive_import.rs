//! OCI/Docker archive import into a directory store and the daemon's
//! content stack. Tar header checksums are fixed first; a hash of the input
//! picks the format, platform and options.
#![no_main]
use std::sync::{LazyLock, Mutex};
use stevedore_fuzz::targets::ArchiveImport;
use stevedore_fuzz::{fnv, tarfix};

static TARGET: LazyLock<Mutex<ArchiveImport>> =
    LazyLock::new(|| Mutex::new(ArchiveImport::new().expect("create the archive import stores")));

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = data.to_vec();
    tarfix::fix_checksums(&mut input);
    let mut target = TARGET.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(broken) = target.exec(&input, fnv(data)) {
        panic!("archive_import: {broken}");
    }
});
