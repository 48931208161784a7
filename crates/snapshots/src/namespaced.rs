//! containerd namespaces over one snapshotter. A snapshot `key` of namespace
//! `ns` is stored in the backend as `ns/key` (parents likewise), so each
//! namespace sees only its own snapshots, and a namespace name (which cannot
//! contain `/`) is an unambiguous prefix. The GC lists every snapshot with
//! [`Namespaced::all`] and deletes with [`Namespaced::remove`].

use crate::{Info, Snapshotter, Usage};
use std::collections::HashMap;
use std::sync::Arc;
use stevedore_types::filters::Filter;
use stevedore_types::{Error, Mount, Result};

/// A snapshotter shared by all namespaces.
#[derive(Clone)]
pub struct Namespaced {
    inner: Arc<dyn Snapshotter>,
}

fn backend_key(ns: &str, key: &str) -> Result<String> {
    if ns.is_empty() || ns.contains('/') {
        return Err(Error::invalid(format!("invalid namespace {ns:?}")));
    }
    Ok(format!("{ns}/{key}"))
}

fn parent_key(ns: &str, parent: &str) -> Result<String> {
    if parent.is_empty() {
        Ok(String::new())
    } else {
        backend_key(ns, parent)
    }
}

fn strip(ns: &str, s: &str) -> Option<String> {
    s.strip_prefix(ns)?.strip_prefix('/').map(str::to_string)
}

/// Map backend names in an error message back to the client's names.
fn localize(ns: &str, e: Error) -> Error {
    let prefix = format!("\"{ns}/");
    Error::new(e.kind, e.message.replace(&prefix, "\""))
}

fn to_local(ns: &str, mut info: Info) -> Option<Info> {
    info.name = strip(ns, &info.name)?;
    info.parent = if info.parent.is_empty() {
        String::new()
    } else {
        strip(ns, &info.parent)?
    };
    Some(info)
}

impl Namespaced {
    pub fn new(inner: Arc<dyn Snapshotter>) -> Self {
        Namespaced { inner }
    }

    /// The backend snapshotter.
    pub fn inner(&self) -> &Arc<dyn Snapshotter> {
        &self.inner
    }

    pub fn stat(&self, ns: &str, key: &str) -> Result<Info> {
        let info = self
            .inner
            .stat(&backend_key(ns, key)?)
            .map_err(|e| localize(ns, e))?;
        to_local(ns, info).ok_or_else(|| Error::internal("snapshot outside its namespace"))
    }

    pub fn update(&self, ns: &str, mut info: Info, fieldpaths: &[String]) -> Result<Info> {
        info.name = backend_key(ns, &info.name)?;
        let info = self
            .inner
            .update(info, fieldpaths)
            .map_err(|e| localize(ns, e))?;
        to_local(ns, info).ok_or_else(|| Error::internal("snapshot outside its namespace"))
    }

    pub fn usage(&self, ns: &str, key: &str) -> Result<Usage> {
        self.inner
            .usage(&backend_key(ns, key)?)
            .map_err(|e| localize(ns, e))
    }

    pub fn mounts(&self, ns: &str, key: &str) -> Result<Vec<Mount>> {
        self.inner
            .mounts(&backend_key(ns, key)?)
            .map_err(|e| localize(ns, e))
    }

    pub fn prepare(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.inner
            .prepare(&backend_key(ns, key)?, &parent_key(ns, parent)?, labels)
            .map_err(|e| localize(ns, e))
    }

    pub fn view(
        &self,
        ns: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.inner
            .view(&backend_key(ns, key)?, &parent_key(ns, parent)?, labels)
            .map_err(|e| localize(ns, e))
    }

    pub fn commit(
        &self,
        ns: &str,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.inner
            .commit(&backend_key(ns, name)?, &backend_key(ns, key)?, labels)
            .map_err(|e| localize(ns, e))
    }

    /// [`crate::Snapshotter::can_rebase`].
    pub fn can_rebase(&self) -> bool {
        self.inner.can_rebase()
    }

    /// [`crate::Snapshotter::rebase`] within `ns`.
    pub fn rebase(&self, ns: &str, key: &str, parent: &str) -> Result<Vec<Mount>> {
        self.inner
            .rebase(&backend_key(ns, key)?, &parent_key(ns, parent)?)
            .map_err(|e| localize(ns, e))
    }

    pub fn remove(&self, ns: &str, key: &str) -> Result<()> {
        self.inner
            .remove(&backend_key(ns, key)?)
            .map_err(|e| localize(ns, e))
    }

    /// The snapshots of `ns` that `filter` accepts (matched on local names).
    pub fn list(&self, ns: &str, filter: &Filter) -> Result<Vec<Info>> {
        let all = self.inner.list(&Filter::default())?;
        Ok(all
            .into_iter()
            .filter_map(|i| to_local(ns, i))
            .filter(|i| i.matches(filter))
            .collect())
    }

    /// Every snapshot of every namespace as `(namespace, local info)`: the
    /// GC reads labels (`containerd.io/gc.ref.snapshot.*`) from here.
    pub fn all(&self) -> Result<Vec<(String, Info)>> {
        Ok(self
            .inner
            .list(&Filter::default())?
            .into_iter()
            .filter_map(|i| {
                let ns = i.name.split_once('/')?.0.to_string();
                let local = to_local(&ns, i)?;
                Some((ns, local))
            })
            .collect())
    }

    /// Remove directories no snapshot owns.
    pub fn cleanup(&self) -> Result<()> {
        self.inner.cleanup()
    }
}
