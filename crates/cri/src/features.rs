//! What the runtime handlers can do, as `Status` reports it in
//! `RuntimeHandlerFeatures` (containerd 2.x's): recursive read-only mounts
//! need runc's `rro` mount option (runc 1.1 lists it in `runc features`) and
//! Linux 5.12's `mount_setattr`. Probed once, on a blocking thread at plugin
//! start; the runtime is runc on PATH, the shim's default.

use std::sync::OnceLock;

static RECURSIVE_READ_ONLY: OnceLock<bool> = OnceLock::new();

/// Whether the runtime mounts recursively read-only (runc's `rro`).
pub fn recursive_read_only_mounts() -> bool {
    *RECURSIVE_READ_ONLY.get_or_init(|| {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        kernel_at_least(&kernel, (5, 12)) && runc_mount_options("runc").iter().any(|o| o == "rro")
    })
}

/// `major.minor` of a kernel release string (`6.1.0-18-amd64`) at least `want`.
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// The mount options `<runc> features` lists (none if it cannot say).
fn runc_mount_options(runc: &str) -> Vec<String> {
    let Ok(out) = std::process::Command::new(runc)
        .arg("features")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| {
            v["mountOptions"].as_array().map(|a| {
                a.iter()
                    .filter_map(|o| o.as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(kernel_at_least("5.12.0", (5, 12)));
        assert!(kernel_at_least("6.1.0-18-amd64", (5, 12)));
        assert!(kernel_at_least("6.18.44-fc-v1272\n", (5, 12)));
        assert!(!kernel_at_least("5.10.209", (5, 12)));
        assert!(!kernel_at_least("4.19", (5, 12)));
        assert!(!kernel_at_least("", (5, 12)));
    }

    #[test]
    fn a_runtime_that_cannot_answer_lists_no_options() {
        assert!(runc_mount_options("/nonexistent/runc").is_empty());
        assert!(runc_mount_options("false").is_empty());
    }
}
