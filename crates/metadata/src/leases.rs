//! Leases (containerd's `metadata/leases.go`): named holds on resources that
//! keep them from garbage collection until the lease is deleted or expires
//! (label `containerd.io/gc.expire`, RFC 3339).
//!
//! # Tables
//! - `leases`: `(namespace, id) -> JSON {created, labels}`
//! - `lease_resources`: `(namespace, lease, type, id) -> ()`, types as
//!   containerd names them: `content` (a digest), `ingests` (a ref),
//!   `snapshots/<snapshotter>` (a snapshot key).

use crate::content::{from_nanos, to_nanos};
use crate::namespaces;
use crate::{db_err, ns_scan, Db, MutationKind};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::SystemTime;
use stevedore_types::filters::{Adaptor, Filter};
use stevedore_types::{labels, Digest, Error, Result};

pub(crate) const LEASES: crate::NsTable = TableDefinition::new("leases");

/// `(namespace, lease, type, id)`.
pub(crate) type ResourceTable =
    TableDefinition<'static, (&'static str, &'static str, &'static str, &'static str), ()>;
pub(crate) const RESOURCES: ResourceTable = TableDefinition::new("lease_resources");

/// The label that makes a lease expire.
pub const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";

/// A lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub created_at: SystemTime,
    pub labels: HashMap<String, String>,
}

impl Adaptor for Lease {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "id" => Some(self.id.clone()),
            "labels" => self.labels.get(&path[1..].join(".")).cloned(),
            _ => None,
        }
    }
}

/// A resource held by a lease.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Resource {
    pub id: String,
    pub kind: String,
}

impl Resource {
    pub fn content(d: &Digest) -> Resource {
        Resource {
            id: d.to_string(),
            kind: "content".into(),
        }
    }
    pub fn ingest(reference: &str) -> Resource {
        Resource {
            id: reference.to_string(),
            kind: "ingests".into(),
        }
    }
    /// Check the type and id the way containerd does.
    pub fn validate(&self) -> Result<()> {
        match self.kind.as_str() {
            "content" => {
                self.id
                    .parse::<Digest>()
                    .map_err(|e| e.context(format!("lease resource {}", self.id)))?;
            }
            "ingests" => {}
            k if k.starts_with("snapshots/") && k.len() > "snapshots/".len() => {}
            k => {
                return Err(Error::invalid(format!(
                "unsupported resource type {k:?}: use content, ingests or snapshots/<snapshotter>"
            )))
            }
        }
        if self.id.is_empty() {
            return Err(Error::invalid("lease resource id must not be empty"));
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct LeaseRecord {
    created: u64,
    #[serde(default)]
    labels: HashMap<String, String>,
}

fn decode(id: &str, bytes: &[u8]) -> Result<Lease> {
    let r: LeaseRecord = serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("metadata: corrupt lease {id:?} record: {e}")))?;
    Ok(Lease {
        id: id.to_string(),
        created_at: from_nanos(r.created),
        labels: r.labels,
    })
}

fn lease_not_found(id: &str) -> Error {
    Error::not_found(format!("lease {id:?}: not found"))
}

fn require_lease(tx: &redb::WriteTransaction, ns: &str, id: &str) -> Result<()> {
    let t = tx
        .open_table(LEASES)
        .map_err(|e| db_err("open leases", e))?;
    if t.get((ns, id))
        .map_err(|e| db_err("get lease", e))?
        .is_none()
    {
        return Err(lease_not_found(id));
    }
    Ok(())
}

/// Add a resource to a lease inside a transaction (the lease must exist).
pub fn add_resource_tx(
    tx: &redb::WriteTransaction,
    ns: &str,
    lease: &str,
    r: &Resource,
) -> Result<()> {
    require_lease(tx, ns, lease)?;
    let mut t = tx
        .open_table(RESOURCES)
        .map_err(|e| db_err("open lease resources", e))?;
    t.insert((ns, lease, r.kind.as_str(), r.id.as_str()), ())
        .map_err(|e| db_err("add lease resource", e))?;
    Ok(())
}

/// Remove a resource from a lease inside a transaction (absent is fine).
pub fn delete_resource_tx(
    tx: &redb::WriteTransaction,
    ns: &str,
    lease: &str,
    r: &Resource,
) -> Result<()> {
    let mut t = tx
        .open_table(RESOURCES)
        .map_err(|e| db_err("open lease resources", e))?;
    t.remove((ns, lease, r.kind.as_str(), r.id.as_str()))
        .map_err(|e| db_err("delete lease resource", e))?;
    Ok(())
}

/// Every resource of a lease.
pub(crate) fn resources_of<T>(t: &T, ns: &str, lease: &str) -> Result<Vec<Resource>>
where
    T: ReadableTable<(&'static str, &'static str, &'static str, &'static str), ()>,
{
    let mut out = Vec::new();
    for r in t
        .range((ns, lease, "", "")..)
        .map_err(|e| db_err("scan lease resources", e))?
    {
        let (k, _) = r.map_err(|e| db_err("scan lease resources", e))?;
        let (kns, kl, kind, id) = k.value();
        if kns != ns || kl != lease {
            break;
        }
        out.push(Resource {
            id: id.to_string(),
            kind: kind.to_string(),
        });
    }
    Ok(out)
}

/// Remove a lease and its resources inside a transaction.
pub(crate) fn delete_tx(tx: &redb::WriteTransaction, ns: &str, id: &str) -> Result<bool> {
    let mut t = tx
        .open_table(LEASES)
        .map_err(|e| db_err("open leases", e))?;
    let existed = t
        .remove((ns, id))
        .map_err(|e| db_err("delete lease", e))?
        .is_some();
    let mut rt = tx
        .open_table(RESOURCES)
        .map_err(|e| db_err("open lease resources", e))?;
    for r in resources_of(&rt, ns, id)? {
        rt.remove((ns, id, r.kind.as_str(), r.id.as_str()))
            .map_err(|e| db_err("delete lease resource", e))?;
    }
    Ok(existed)
}

/// Parse an RFC 3339 timestamp (`2006-01-02T15:04:05Z07:00`, optional
/// fraction), as Go's time.RFC3339 writes it.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse::<i64>().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() {
            return None;
        }
        let mut f = frac.chars().take(9).collect::<String>();
        while f.len() < 9 {
            f.push('0');
        }
        nanos = f.parse().ok()?;
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        b'+' | b'-' if i + 6 == b.len() && b[i + 3] == b':' => {
            let sign = if b[i] == b'-' { -1 } else { 1 };
            sign * (num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60)
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // days from civil (Howard Hinnant's algorithm)
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let base = std::time::UNIX_EPOCH;
    if secs >= 0 {
        Some(base + std::time::Duration::new(secs as u64, nanos as u32))
    } else {
        base.checked_sub(std::time::Duration::from_secs((-secs) as u64))
            .map(|t| t + std::time::Duration::from_nanos(nanos as u64))
    }
}

/// True when the lease's `gc.expire` label lies in the past (an unparsable
/// label is ignored, as containerd does).
pub fn is_expired(l: &Lease, now: SystemTime) -> bool {
    l.labels
        .get(LABEL_GC_EXPIRE)
        .and_then(|v| parse_rfc3339(v))
        .is_some_and(|t| t < now)
}

impl Db {
    /// Create a lease.
    pub fn create_lease(
        &self,
        ns: &str,
        id: &str,
        labels: &HashMap<String, String>,
    ) -> Result<Lease> {
        if id.is_empty() {
            return Err(Error::invalid("create lease: lease id must be provided"));
        }
        labels::validate_all(labels).map_err(|e| e.context(format!("lease {id:?}")))?;
        let lease = Lease {
            id: id.to_string(),
            created_at: SystemTime::now(),
            labels: labels.clone(),
        };
        self.update(|tx| {
            namespaces::ensure(tx, ns)?;
            let mut t = tx
                .open_table(LEASES)
                .map_err(|e| db_err("open leases", e))?;
            if t.get((ns, id))
                .map_err(|e| db_err("get lease", e))?
                .is_some()
            {
                return Err(Error::already_exists(format!(
                    "lease {id:?}: already exists"
                )));
            }
            let rec = LeaseRecord {
                created: to_nanos(lease.created_at),
                labels: lease.labels.clone(),
            };
            t.insert(
                (ns, id),
                serde_json::to_vec(&rec).expect("serialises").as_slice(),
            )
            .map_err(|e| db_err("put lease", e))?;
            Ok(())
        })?;
        Ok(lease)
    }

    /// Delete a lease; what it held becomes collectable.
    pub fn delete_lease(&self, ns: &str, id: &str) -> Result<()> {
        self.update(|tx| {
            if !delete_tx(tx, ns, id)? {
                return Err(lease_not_found(id));
            }
            Ok(())
        })?;
        self.notify(MutationKind::Delete);
        Ok(())
    }

    /// Leases of a namespace matching `filter` (fields: id, labels.<k>).
    pub fn list_leases(&self, ns: &str, filter: &Filter) -> Result<Vec<Lease>> {
        self.view(|tx| {
            let t = tx
                .open_table(LEASES)
                .map_err(|e| db_err("open leases", e))?;
            let mut out = Vec::new();
            for (k, v) in ns_scan(&t, ns)? {
                let l = decode(&k, &v)?;
                if filter.matches(&l) {
                    out.push(l);
                }
            }
            Ok(out)
        })
    }

    pub fn add_lease_resource(&self, ns: &str, lease: &str, r: &Resource) -> Result<()> {
        r.validate()?;
        self.update(|tx| add_resource_tx(tx, ns, lease, r))
    }

    pub fn delete_lease_resource(&self, ns: &str, lease: &str, r: &Resource) -> Result<()> {
        r.validate()?;
        self.update(|tx| {
            require_lease(tx, ns, lease)?;
            delete_resource_tx(tx, ns, lease, r)
        })?;
        self.notify(MutationKind::Delete);
        Ok(())
    }

    pub fn list_lease_resources(&self, ns: &str, lease: &str) -> Result<Vec<Resource>> {
        self.view(|tx| {
            let t = tx
                .open_table(LEASES)
                .map_err(|e| db_err("open leases", e))?;
            if t.get((ns, lease))
                .map_err(|e| db_err("get lease", e))?
                .is_none()
            {
                return Err(lease_not_found(lease));
            }
            let rt = tx
                .open_table(RESOURCES)
                .map_err(|e| db_err("open lease resources", e))?;
            resources_of(&rt, ns, lease)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn parses_rfc3339_like_go() {
        let t = parse_rfc3339("2024-02-29T12:34:56Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_709_210_096
        );
        let t2 = parse_rfc3339("2024-02-29T14:34:56.5+02:00").unwrap();
        assert_eq!(t2, t + Duration::from_millis(500));
        assert!(parse_rfc3339("1970-01-01T00:00:00Z").is_some());
        for bad in [
            "",
            "2024-02-29",
            "2024-13-01T00:00:00Z",
            "2024-02-29T12:34:56",
            "x",
        ] {
            assert!(parse_rfc3339(bad).is_none(), "{bad}");
        }
    }
}
