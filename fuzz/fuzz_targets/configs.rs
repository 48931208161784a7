//! stevedored's config file and containerd's hosts.toml: each input goes to
//! both parsers.
#![no_main]
use std::sync::LazyLock;
use stevedore_fuzz::targets::{hosts_toml, DaemonConfig};

static DAEMON: LazyLock<DaemonConfig> = LazyLock::new(DaemonConfig::default);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = DAEMON.exec(data) {
        panic!("daemon config: {broken}");
    }
    if let Err(broken) = hosts_toml(data) {
        panic!("hosts.toml: {broken}");
    }
});
