//! The ADD result cache, in libcni's layout and format so a DEL after a
//! daemon restart (ours, or containerd's before we took over) finds it.
//!
//! Layout: `<cache_dir>/results/<network>-<container id>-<ifname>` (libcni's
//! `cache_dir` is `/var/lib/cni`), mode 0600 in a 0700 directory. Format
//! (libcni's `cachedInfo`):
//!
//! ```json
//! {"kind":"cniCacheV1","containerId":"..","config":"<base64 of the list JSON>",
//!  "ifName":"eth0","networkName":"..","cniArgs":[["K8S_POD_NAME",".."]],
//!  "capabilityArgs":{..},"result":{<the ADD result>}}
//! ```
//!
//! Files written before libcni had `kind` hold the bare result; we read those too.
//! The three name parts are validated before they get here (libcni's name rule
//! for network and container id, the interface name rule), so the file name
//! cannot leave `results/`. Crash safety: write a temp file, fsync, rename,
//! so a reader sees the old entry, the new one, or none; a missing or
//! unreadable entry only means DEL runs without `prevResult`, as libcni does.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// Where cached results live.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    pub dir: PathBuf,
}

/// What a cache entry records about one ADD.
pub(crate) struct Entry<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub config: &'a [u8],
    pub cni_args: &'a [(String, String)],
    pub capability_args: &'a Map<String, Value>,
    pub result: &'a Value,
}

impl Cache {
    /// The entry's file.
    pub fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.dir
            .join("results")
            .join(format!("{network}-{container_id}-{ifname}"))
    }

    /// Record an ADD result.
    pub fn write(&self, e: &Entry<'_>) -> Result<()> {
        let path = self.path(e.network, e.container_id, e.ifname);
        let err = |source| Error::Cache {
            op: "set",
            network: e.network.to_string(),
            path: path.clone(),
            source,
        };
        let mut doc = json!({
            "kind": "cniCacheV1",
            "containerId": e.container_id,
            "config": base64(e.config),
            "ifName": e.ifname,
            "networkName": e.network,
            "result": e.result,
        });
        if !e.cni_args.is_empty() {
            doc["cniArgs"] = e
                .cni_args
                .iter()
                .map(|(k, v)| json!([k, v]))
                .collect::<Vec<_>>()
                .into();
        }
        if !e.capability_args.is_empty() {
            doc["capabilityArgs"] = Value::Object(e.capability_args.clone());
        }
        let bytes = serde_json::to_vec(&doc).map_err(|e| err(e.into()))?;
        let dir = self.dir.join("results");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(err)?;
        write_atomic(&dir, &path, &bytes).map_err(err)
    }

    /// The cached ADD result, if there is a readable one.
    pub fn read_result(&self, network: &str, container_id: &str, ifname: &str) -> Option<Value> {
        let path = self.path(network, container_id, ifname);
        let bytes = std::fs::read(path).ok()?;
        let doc: Value = serde_json::from_slice(&bytes).ok()?;
        if doc.get("kind").and_then(Value::as_str) == Some("cniCacheV1") {
            return doc.get("result").filter(|r| r.is_object()).cloned();
        }
        // libcni's legacy format: the bare result
        doc.get("cniVersion").is_some().then_some(doc)
    }

    /// Forget an entry; a missing one is fine.
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.path(network, container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Cache {
                op: "remove",
                network: network.to_string(),
                path,
                source,
            }),
        }
    }
}

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Standard base64 with padding: how Go's encoding/json writes `[]byte`.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_go() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"{\"a\":1}"), "eyJhIjoxfQ==");
    }

    #[test]
    fn round_trips_and_reads_libcni_legacy_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache {
            dir: dir.path().to_path_buf(),
        };
        assert_eq!(cache.read_result("net", "c1", "eth0"), None);
        let result = json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]});
        cache
            .write(&Entry {
                network: "net",
                container_id: "c1",
                ifname: "eth0",
                config: b"{}",
                cni_args: &[("K8S_POD_NAME".into(), "p".into())],
                capability_args: &Map::new(),
                result: &result,
            })
            .unwrap();
        let path = dir.path().join("results/net-c1-eth0");
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["kind"], "cniCacheV1");
        assert_eq!(doc["config"], "e30=");
        assert_eq!(doc["cniArgs"], json!([["K8S_POD_NAME", "p"]]));
        assert_eq!(cache.read_result("net", "c1", "eth0"), Some(result.clone()));
        cache.remove("net", "c1", "eth0").unwrap();
        cache.remove("net", "c1", "eth0").unwrap();
        assert!(!path.exists());

        std::fs::write(&path, serde_json::to_vec(&result).unwrap()).unwrap();
        assert_eq!(cache.read_result("net", "c1", "eth0"), Some(result));
        std::fs::write(&path, b"garbage").unwrap();
        assert_eq!(cache.read_result("net", "c1", "eth0"), None);
    }
}
