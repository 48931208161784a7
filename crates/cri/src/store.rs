//! What the CRI knows of its pods and containers: metadata kept with each
//! containerd container record (an extension, like containerd's CRI), status
//! checkpointed to a file per container, and the in-memory index the
//! requests read (names reserved once, ids found by unique prefix like
//! containerd's truncindex).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use stevedore_api::cri;
use tonic::Status;

/// Container label saying what a record is to the CRI.
pub const KIND_LABEL: &str = "io.cri-containerd.kind";
pub const KIND_SANDBOX: &str = "sandbox";
pub const KIND_CONTAINER: &str = "container";
/// Container extensions holding the CRI's metadata.
pub const SANDBOX_EXT: &str = "io.cri-containerd.sandbox.metadata";
pub const CONTAINER_EXT: &str = "io.cri-containerd.container.metadata";
pub const SANDBOX_META_TYPE: &str = "stevedore.cri.v1.SandboxMetadata";
pub const CONTAINER_META_TYPE: &str = "stevedore.cri.v1.ContainerMetadata";

/// `meta` as its pause container's record carries it (`SANDBOX_EXT`).
pub fn sandbox_ext(meta: &SandboxMeta) -> prost_types::Any {
    prost_types::Any {
        type_url: SANDBOX_META_TYPE.into(),
        value: prost::Message::encode_to_vec(meta),
    }
}

/// A pod sandbox's metadata, kept with its pause container's record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SandboxMeta {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, optional, tag = "3")]
    pub config: Option<cri::PodSandboxConfig>,
    /// The pod's network namespace ("" with the host's network).
    #[prost(string, tag = "4")]
    pub netns_path: String,
    #[prost(string, tag = "5")]
    pub ip: String,
    #[prost(string, repeated, tag = "6")]
    pub additional_ips: Vec<String>,
    #[prost(string, tag = "7")]
    pub runtime_handler: String,
    /// Unix nanoseconds.
    #[prost(int64, tag = "8")]
    pub created_at: i64,
    #[prost(string, tag = "9")]
    pub runtime_type: String,
}

/// A container's metadata, kept with its record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerMeta {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub sandbox_id: String,
    #[prost(message, optional, tag = "4")]
    pub config: Option<cri::ContainerConfig>,
    /// The image's id (`sha256:<config digest>`).
    #[prost(string, tag = "5")]
    pub image_ref: String,
    /// The image as the request named it.
    #[prost(string, tag = "6")]
    pub image_name: String,
    /// Absolute log path ("" when the pod has no log directory).
    #[prost(string, tag = "7")]
    pub log_path: String,
    #[prost(string, tag = "8")]
    pub stdin: String,
    #[prost(string, tag = "9")]
    pub stdout: String,
    #[prost(string, tag = "10")]
    pub stderr: String,
    #[prost(int64, tag = "11")]
    pub created_at: i64,
    #[prost(string, tag = "12")]
    pub snapshotter: String,
    /// The identity of the container's process as its spec sets it
    /// (ContainerStatus.user); none in records made before it was kept.
    #[prost(message, optional, tag = "13")]
    pub user: Option<cri::ContainerUser>,
}

/// A container's changing status, checkpointed to `<dir>/status`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatus {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    #[prost(int64, tag = "2")]
    pub started_at: i64,
    #[prost(int64, tag = "3")]
    pub finished_at: i64,
    #[prost(int32, tag = "4")]
    pub exit_code: i32,
    #[prost(string, tag = "5")]
    pub reason: String,
    #[prost(string, tag = "6")]
    pub message: String,
    /// A start failed or the state could not be learned.
    #[prost(bool, tag = "7")]
    pub unknown: bool,
    #[prost(bool, tag = "8")]
    pub removing: bool,
}

impl ContainerStatus {
    /// The CRI state this status means.
    pub fn state(&self) -> cri::ContainerState {
        if self.unknown {
            cri::ContainerState::ContainerUnknown
        } else if self.finished_at != 0 {
            cri::ContainerState::ContainerExited
        } else if self.started_at != 0 {
            cri::ContainerState::ContainerRunning
        } else {
            cri::ContainerState::ContainerCreated
        }
    }
}

/// A pod sandbox's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// Being set up or torn down.
    Unknown,
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SandboxStatus {
    pub pid: u32,
    pub exited_at: i64,
}

pub struct Sandbox {
    pub meta: Mutex<SandboxMeta>,
    pub state: Mutex<(SandboxState, SandboxStatus)>,
    /// Serialises stop/remove of this sandbox.
    pub op: tokio::sync::Mutex<()>,
}

impl Sandbox {
    pub fn new(meta: SandboxMeta, state: SandboxState) -> Sandbox {
        Sandbox {
            meta: Mutex::new(meta),
            state: Mutex::new((state, SandboxStatus::default())),
            op: tokio::sync::Mutex::new(()),
        }
    }
    pub fn meta(&self) -> SandboxMeta {
        lock(&self.meta).clone()
    }
    pub fn id(&self) -> String {
        lock(&self.meta).id.clone()
    }
    pub fn state(&self) -> SandboxState {
        lock(&self.state).0
    }
    pub fn pid(&self) -> u32 {
        lock(&self.state).1.pid
    }
    pub fn set_state(&self, s: SandboxState) {
        lock(&self.state).0 = s;
    }
    /// The state the CRI reports: anything but ready is not ready.
    pub fn cri_state(&self) -> cri::PodSandboxState {
        match self.state() {
            SandboxState::Ready => cri::PodSandboxState::SandboxReady,
            _ => cri::PodSandboxState::SandboxNotready,
        }
    }
    /// Whether the sandbox passes a CRI list filter: its id starts with
    /// `id` and it has every label of `label_selector` (empty: any).
    pub fn matches(&self, id: &str, label_selector: &HashMap<String, String>) -> bool {
        let meta = lock(&self.meta);
        meta.id.starts_with(id)
            && has_labels(meta.config.as_ref().map(|c| &c.labels), label_selector)
    }
}

pub struct Container {
    pub meta: ContainerMeta,
    status: Mutex<ContainerStatus>,
    /// The file the status is checkpointed to.
    status_file: PathBuf,
    pub io: Mutex<Option<Arc<crate::io::ContainerIo>>>,
    /// Serialises start/stop/remove of this container.
    pub op: tokio::sync::Mutex<()>,
}

impl Container {
    pub fn new(meta: ContainerMeta, status: ContainerStatus, dir: &Path) -> Container {
        Container {
            meta,
            status: Mutex::new(status),
            status_file: dir.join("status"),
            io: Mutex::new(None),
            op: tokio::sync::Mutex::new(()),
        }
    }
    pub fn status(&self) -> ContainerStatus {
        lock(&self.status).clone()
    }
    /// Change the status and checkpoint it (write to a temp file, rename).
    pub fn update(&self, f: impl FnOnce(&mut ContainerStatus)) -> Result<(), Status> {
        let mut s = lock(&self.status);
        let mut next = s.clone();
        f(&mut next);
        write_status(&self.status_file, &next)?;
        *s = next;
        Ok(())
    }
    pub fn io(&self) -> Option<Arc<crate::io::ContainerIo>> {
        lock(&self.io).clone()
    }
    /// Whether the container passes a CRI list filter: its id starts with
    /// `id`, its sandbox's with `pod_sandbox_id`, and it has every label of
    /// `label_selector` (empty: any).
    pub fn matches(
        &self,
        id: &str,
        pod_sandbox_id: &str,
        label_selector: &HashMap<String, String>,
    ) -> bool {
        self.meta.id.starts_with(id)
            && self.meta.sandbox_id.starts_with(pod_sandbox_id)
            && has_labels(self.meta.config.as_ref().map(|c| &c.labels), label_selector)
    }
}

/// Whether `labels` hold every key of `selector` with its value.
fn has_labels(
    labels: Option<&HashMap<String, String>>,
    selector: &HashMap<String, String>,
) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn write_status(path: &Path, s: &ContainerStatus) -> Result<(), Status> {
    use prost::Message;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, s.encode_to_vec())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Status::internal(format!("checkpoint status {}: {e}", path.display())))
}

/// Read a checkpointed status; a missing or corrupt file is "unknown".
pub fn read_status(dir: &Path) -> ContainerStatus {
    use prost::Message;
    match std::fs::read(dir.join("status")) {
        Ok(b) => ContainerStatus::decode(b.as_slice()).unwrap_or(ContainerStatus {
            unknown: true,
            ..Default::default()
        }),
        Err(_) => ContainerStatus {
            unknown: true,
            ..Default::default()
        },
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pods and containers by id, and the names they reserve.
#[derive(Default)]
pub struct Store {
    sandboxes: RwLock<BTreeMap<String, Arc<Sandbox>>>,
    containers: RwLock<BTreeMap<String, Arc<Container>>>,
    names: Mutex<HashMap<String, String>>,
}

impl Store {
    /// Reserve `name` for `id`; a name held by another id is refused as
    /// containerd's registrar does.
    pub fn reserve(&self, name: &str, id: &str) -> Result<(), Status> {
        let mut names = lock(&self.names);
        match names.get(name) {
            Some(holder) if holder != id => Err(Status::already_exists(format!(
                "name {name:?} is reserved for {holder:?}"
            ))),
            _ => {
                names.insert(name.to_string(), id.to_string());
                Ok(())
            }
        }
    }
    pub fn release(&self, name: &str) {
        lock(&self.names).remove(name);
    }

    pub fn add_sandbox(&self, s: Arc<Sandbox>) {
        let id = s.id();
        self.sandboxes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, s);
    }
    pub fn remove_sandbox(&self, id: &str) {
        self.sandboxes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
    pub fn sandboxes(&self) -> Vec<Arc<Sandbox>> {
        self.sandboxes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
    /// A sandbox by id or unique id prefix.
    pub fn sandbox(&self, id: &str) -> Result<Arc<Sandbox>, Status> {
        let map = self.sandboxes.read().unwrap_or_else(|e| e.into_inner());
        find(&map, id).ok_or_else(|| {
            Status::not_found(format!(
                "an error occurred when try to find sandbox {id:?}: not found"
            ))
        })
    }

    pub fn add_container(&self, c: Arc<Container>) {
        self.containers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(c.meta.id.clone(), c);
    }
    pub fn remove_container(&self, id: &str) {
        self.containers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
    pub fn containers(&self) -> Vec<Arc<Container>> {
        self.containers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
    /// A container by id or unique id prefix.
    /// The container `id` (or unique prefix), which must be running.
    pub fn running_container(&self, id: &str) -> Result<Arc<Container>, Status> {
        let c = self.container(id)?;
        if c.status().state() != cri::ContainerState::ContainerRunning {
            return Err(Status::failed_precondition(format!(
                "container {:?} is not in running state",
                c.meta.id
            )));
        }
        Ok(c)
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>, Status> {
        let map = self.containers.read().unwrap_or_else(|e| e.into_inner());
        find(&map, id).ok_or_else(|| {
            Status::not_found(format!(
                "an error occurred when try to find container {id:?}: not found"
            ))
        })
    }
    pub fn containers_of(&self, sandbox_id: &str) -> Vec<Arc<Container>> {
        self.containers()
            .into_iter()
            .filter(|c| c.meta.sandbox_id == sandbox_id)
            .collect()
    }
}

fn find<T: Clone>(map: &BTreeMap<String, T>, id: &str) -> Option<T> {
    if id.is_empty() {
        return None;
    }
    if let Some(v) = map.get(id) {
        return Some(v.clone());
    }
    let mut it = map
        .range(id.to_string()..)
        .take_while(|(k, _)| k.starts_with(id));
    let first = it.next()?;
    if it.next().is_some() {
        return None; // ambiguous prefix
    }
    Some(first.1.clone())
}

/// containerd's `util.GenerateID`: 32 random bytes, hex.
pub fn generate_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// containerd's sandbox name: `<name>_<namespace>_<uid>_<attempt>`.
pub fn sandbox_name(m: &cri::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// containerd's container name:
/// `<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>`.
pub fn container_name(c: &cri::ContainerMetadata, s: &cri::PodSandboxMetadata) -> String {
    format!(
        "{}_{}_{}_{}_{}",
        c.name, s.name, s.namespace, s.uid, c.attempt
    )
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A protobuf timestamp as Unix nanoseconds; none is now.
pub fn nanos_or_now(t: Option<prost_types::Timestamp>) -> i64 {
    t.map(|t| t.seconds * 1_000_000_000 + t.nanos as i64)
        .unwrap_or_else(now_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_find_unique_ids_only() {
        let mut m = BTreeMap::new();
        m.insert("abc1".to_string(), 1);
        m.insert("abc2".to_string(), 2);
        m.insert("def".to_string(), 3);
        assert_eq!(find(&m, "abc1"), Some(1));
        assert_eq!(find(&m, "abc"), None);
        assert_eq!(find(&m, "d"), Some(3));
        assert_eq!(find(&m, ""), None);
        assert_eq!(find(&m, "x"), None);
    }

    #[test]
    fn names_are_reserved_once() {
        let s = Store::default();
        s.reserve("a", "1").unwrap();
        s.reserve("a", "1").unwrap();
        assert_eq!(
            s.reserve("a", "2").unwrap_err().code(),
            tonic::Code::AlreadyExists
        );
        s.release("a");
        s.reserve("a", "2").unwrap();
    }

    #[test]
    fn status_states() {
        let mut s = ContainerStatus::default();
        assert_eq!(s.state(), cri::ContainerState::ContainerCreated);
        s.started_at = 1;
        assert_eq!(s.state(), cri::ContainerState::ContainerRunning);
        s.finished_at = 2;
        assert_eq!(s.state(), cri::ContainerState::ContainerExited);
    }
}
