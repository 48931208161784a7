//! What each fuzz target does with one input, shared by the stable seeded
//! fuzzer (`tests/fuzz.rs`) and the coverage-guided libFuzzer targets
//! (`libfuzzer/`), so both check the same invariants.
//!
//! Every `exec` returns `Ok(())` when the code under test accepted or
//! rejected the input cleanly, and `Err` naming the broken invariant
//! otherwise; a panic is a finding too (the caller catches or aborts).
//! Targets that try an input several ways take a `variant` number: the
//! stable fuzzer passes a running count, libFuzzer a hash of the input (so a
//! crash reproduces from the input alone).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use stevedore_images::content::{Info, Provider};
use stevedore_images::mediatypes::*;
use stevedore_types::filters::Filter;
use stevedore_types::{Descriptor, Digest, Platform, Result};

use crate::{samples, ExecResult};

fn text(input: &[u8]) -> String {
    String::from_utf8_lossy(input).into_owned()
}

/// Filters: parse one filter, and the input's lines as alternatives, then
/// match whatever parsed against a few objects.
pub fn filter(input: &[u8]) -> ExecResult {
    let objects: [BTreeMap<&str, &str>; 3] = [
        BTreeMap::from([
            ("name", "docker.io/library/busybox:latest"),
            ("labels.a", "b"),
            ("labels.io.containerd/x", "1"),
        ]),
        BTreeMap::from([("id", "x"), ("topic", "/tasks/exit")]),
        BTreeMap::new(),
    ];
    let s = text(input);
    let parts: Vec<&str> = s.split('\n').collect();
    for f in [Filter::parse(&s), Filter::parse_all(&parts)]
        .into_iter()
        .flatten()
    {
        for o in &objects {
            let adaptor = |path: &[String]| o.get(path.join(".").as_str()).map(|v| v.to_string());
            f.matches(&adaptor);
        }
    }
    Ok(())
}

/// References, platforms and digests: every parser, and a normalised
/// reference must read back as itself in full and (when unambiguous)
/// familiar form.
pub fn reference(input: &[u8]) -> ExecResult {
    use stevedore_images::reference as iref;
    use stevedore_remote::reference::Reference;
    let s = text(input);
    let _ = iref::parse(&s);
    let _ = iref::oci_reference_name(&s);
    let _ = iref::parse_normalized_named(&s).map(|r| (r.name(), r.full(), r.familiar()));
    let _ = iref::normalize_docker_ref(&s);
    let _ = iref::familiarize(&s);
    let _ = s.parse::<Platform>().map(Platform::normalize);
    let _ = s.parse::<Digest>();
    let _ = Reference::parse_qualified(&s);
    if let Ok(r) = Reference::parse_normalized(&s) {
        let again = Reference::parse_normalized(&r.to_string())
            .map_err(|e| format!("{s:?} normalised to {r} which does not parse: {e}"))?;
        if again != r {
            return Err(format!("{s:?}: {r} reparses as {again}"));
        }
        // docker's familiar form is ambiguous when a docker.io path starts
        // with a host-like component (docker.io/a.b/c familiarises to
        // a.b/c, which names host a.b): only unambiguous ones must round-trip
        let familiar = r.familiar();
        let first = familiar.split('/').next().unwrap_or_default();
        let ambiguous =
            familiar.contains('/') && (first.contains(['.', ':']) || first == "localhost");
        if !ambiguous {
            let fam = Reference::parse_normalized(&familiar)
                .map_err(|e| format!("{s:?}: familiar form {familiar:?} does not parse: {e}"))?;
            if fam != r {
                return Err(format!("{s:?}: familiar {familiar:?} reparses as {fam}"));
            }
        }
        let _ = (r.object(), r.docker_ref(), r.with_tag("x"));
    }
    Ok(())
}

/// Content in memory, for the JSON target.
pub struct MemStore(pub HashMap<Digest, Vec<u8>>);

impl Provider for MemStore {
    fn info(&self, digest: &Digest) -> Result<Info> {
        let b = self
            .0
            .get(digest)
            .ok_or_else(|| stevedore_types::Error::not_found(format!("content {digest}")))?;
        Ok(Info {
            digest: digest.clone(),
            size: b.len() as i64,
            labels: HashMap::new(),
        })
    }
    fn reader(&self, desc: &Descriptor, offset: u64) -> Result<Box<dyn Read + Send>> {
        let b = self
            .0
            .get(&desc.digest)
            .ok_or_else(|| stevedore_types::Error::not_found(format!("content {}", desc.digest)))?;
        let start = (offset as usize).min(b.len());
        Ok(Box::new(std::io::Cursor::new(b[start..].to_vec())))
    }
}

/// Manifest, index and config JSON: the input is stored beside the sample
/// image's blobs and read, validated, walked and sized as one media type.
pub struct SpecJson {
    base: HashMap<Digest, Vec<u8>>,
}

/// The media types [`SpecJson::exec`] tries an input as (by `variant`).
pub const SPEC_MEDIA_TYPES: [&str; 6] = [
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    "",
];

impl Default for SpecJson {
    fn default() -> Self {
        SpecJson {
            base: samples::image()
                .into_iter()
                .map(|(d, b)| (d.digest, b))
                .collect(),
        }
    }
}

impl SpecJson {
    /// The sample image's digests, which seeds and dictionaries refer to.
    pub fn digests(&self) -> Vec<String> {
        self.base.keys().map(ToString::to_string).collect()
    }

    pub fn exec(&self, input: &[u8], variant: u64) -> ExecResult {
        use stevedore_images::{handlers, image, spec};
        use stevedore_types::platform::{All, MatchPlatform};
        let mt = SPEC_MEDIA_TYPES[(variant % SPEC_MEDIA_TYPES.len() as u64) as usize];
        let digest = stevedore_images::content::digest_of(input);
        let mut blobs = self.base.clone();
        blobs.insert(digest.clone(), input.to_vec());
        let store = MemStore(blobs);
        let host = stevedore_types::platform::default_matcher();
        let _ = spec::validate_media_type(input, mt);
        let desc = Descriptor::new(mt, digest, input.len() as i64);
        let _ = spec::read_manifest(&store, &desc);
        let _ = spec::read_index(&store, &desc);
        let _ = spec::read_config(&store, &desc);
        let _ = handlers::children(&store, &desc);
        for m in [Some(&All as &dyn MatchPlatform), Some(&host), None] {
            let _ = image::manifest(&store, &desc, m);
            let _ = image::check(&store, &desc, m);
        }
        for m in [&All as &dyn MatchPlatform, &host] {
            let _ = image::size(&store, &desc, m);
        }
        let _ = image::unpack_plan(&store, &desc, &All);
        let _ = image::platforms(&store, &desc);
        let _ = image::rootfs(&store, &desc);
        Ok(())
    }
}

/// Path, mode, inode, mtime and contents (or link target) of each entry.
type Tree = Vec<(PathBuf, u32, u64, i64, Vec<u8>)>;

/// Everything about a directory tree that a stray write would change.
fn snapshot_tree(dir: &Path) -> std::io::Result<Tree> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let md = std::fs::symlink_metadata(&d)?;
        let body = if md.is_file() {
            std::fs::read(&d).unwrap_or_default()
        } else if md.file_type().is_symlink() {
            std::fs::read_link(&d)
                .map(|t| t.into_os_string().into_encoded_bytes())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        out.push((d.clone(), md.mode(), md.ino(), md.mtime(), body));
        if md.is_dir() {
            for e in std::fs::read_dir(&d)? {
                stack.push(e?.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Layer apply into `sandbox/root`; `sandbox/sentinel` (a canary file, a
/// directory and a symlink back into the root) and the sandbox itself must
/// stay exactly as they were, and nothing may appear at /tmp/fuzz-escape
/// (seeds aim absolute symlinks there).
pub struct TarApply {
    sandbox: tempfile::TempDir,
    root: PathBuf,
    before: Tree,
}

/// Where [`TarApply`] seeds aim absolute symlinks, on the host.
pub const HOST_ESCAPE: &str = "/tmp/fuzz-escape";

impl TarApply {
    pub fn new() -> std::io::Result<Self> {
        let sandbox = tempfile::Builder::new().prefix("fuzz-apply-").tempdir()?;
        let root = sandbox.path().join("root");
        let sentinel = sandbox.path().join("sentinel");
        std::fs::create_dir_all(sentinel.join("dir"))?;
        std::fs::write(sentinel.join("canary"), b"do not touch")?;
        std::fs::write(sentinel.join("dir/file"), b"nor this")?;
        std::os::unix::fs::symlink("../root", sentinel.join("link"))?;
        std::fs::create_dir(&root)?;
        let mut t = TarApply {
            sandbox,
            root,
            before: Vec::new(),
        };
        t.before = t.outside().map_err(std::io::Error::other)?;
        Ok(t)
    }

    /// The sentinel directory, which dictionaries aim absolute names at.
    pub fn sentinel(&self) -> PathBuf {
        self.sandbox.path().join("sentinel")
    }

    fn outside(&self) -> std::result::Result<Tree, String> {
        Ok(snapshot_tree(self.sandbox.path())
            .map_err(|e| format!("snapshot the sandbox: {e}"))?
            .into_iter()
            .filter(|(q, ..)| !q.starts_with(&self.root))
            .collect())
    }

    /// Apply `input` as a layer. Input starting with the gzip magic is
    /// gunzipped on the way (hostile gzip streams); otherwise it is a tar,
    /// which `gzip` compresses first (so gzip'd layers reach the tar
    /// reader intact too). Odd `variant`s apply with overlay whiteouts,
    /// even ones delete.
    pub fn exec(&self, input: &[u8], variant: u64, gzip: bool) -> ExecResult {
        use stevedore_diff::apply::{apply, WhiteoutMode};
        use stevedore_diff::{compress, decompress, Compression};
        let mode = [WhiteoutMode::Delete, WhiteoutMode::Overlay][(variant % 2) as usize];
        let res = if input.starts_with(&[0x1f, 0x8b]) {
            decompress(Compression::Gzip, input).and_then(|r| apply(&self.root, r, mode))
        } else if gzip {
            let mut gz = Vec::new();
            let mut w =
                compress(Compression::Gzip, &mut gz).map_err(|e| format!("start gzip: {e}"))?;
            w.write_all(input).map_err(|e| format!("gzip: {e}"))?;
            w.finish_stream().map_err(|e| format!("finish gzip: {e}"))?;
            decompress(Compression::Gzip, &gz[..]).and_then(|r| apply(&self.root, r, mode))
        } else {
            apply(&self.root, input, mode)
        };
        if Path::new(HOST_ESCAPE).exists() {
            return Err(format!(
                "apply ({mode:?}, result {res:?}) wrote {HOST_ESCAPE}"
            ));
        }
        let after = self.outside()?;
        if after != self.before {
            return Err(format!(
                "apply ({mode:?}, result {res:?}) changed the sandbox outside its root:\nbefore {:?}\nafter {after:?}",
                self.before
            ));
        }
        // the next input starts from an empty root (removal never follows links)
        for e in std::fs::read_dir(&self.root).map_err(|e| format!("read root: {e}"))? {
            let p = e.map_err(|e| format!("read root: {e}"))?.path();
            let gone = match std::fs::symlink_metadata(&p) {
                Ok(md) if md.is_dir() => std::fs::remove_dir_all(&p),
                _ => std::fs::remove_file(&p),
            };
            gone.map_err(|e| format!("reset root: remove {}: {e}", p.display()))?;
        }
        Ok(())
    }
}

use std::io::Write as _;

/// The daemon's own content stack (redb records over the local store, through
/// the adapter the Transfer service imports with), reopened every few
/// hundred inputs so the blobs of earlier ones do not pile up.
struct DaemonStore {
    dir: PathBuf,
    db: Option<std::sync::Arc<stevedore_metadata::Db>>,
    uses: u64,
}

impl DaemonStore {
    fn namespace(&mut self, n: u64) -> Result<stevedore_metadata::content::NsContent> {
        let db = match &self.db {
            Some(db) if self.uses < 300 => db.clone(),
            _ => {
                self.db = None;
                let _ = std::fs::remove_dir_all(&self.dir);
                std::fs::create_dir_all(&self.dir)?;
                let db = stevedore_metadata::Db::open(&self.dir.join("meta.db"))?;
                let store = stevedore_content::local::LocalStore::open(&self.dir.join("content"))?;
                db.attach_content(store, Default::default())?;
                let db = std::sync::Arc::new(db);
                self.db = Some(db.clone());
                self.uses = 0;
                db
            }
        };
        self.uses += 1;
        Ok(db.content(&format!("fuzz-{n}"), None))
    }
}

/// OCI/Docker archive import, into a directory store or (every fourth
/// variant) the daemon's content stack; neither may be left with an open
/// ingest, whatever the outcome.
pub struct ArchiveImport {
    dir: tempfile::TempDir,
    daemon: DaemonStore,
    count: u64,
}

impl ArchiveImport {
    /// Stores live on tmpfs when there is one: they are rewritten for every
    /// input.
    pub fn new() -> std::io::Result<Self> {
        let shm = Path::new("/dev/shm");
        let dir = tempfile::Builder::new()
            .prefix("fuzz-import-")
            .tempdir_in(if shm.is_dir() {
                shm.to_path_buf()
            } else {
                std::env::temp_dir()
            })?;
        Ok(ArchiveImport {
            daemon: DaemonStore {
                dir: dir.path().join("daemon"),
                db: None,
                uses: 0,
            },
            dir,
            count: 0,
        })
    }

    pub fn exec(&mut self, input: &[u8], variant: u64) -> ExecResult {
        use stevedore_content::Store as _;
        use stevedore_images::archive::{ArchiveImporter, Format, ImportOptions, Importer};
        use stevedore_images::testing::DirStore;
        use stevedore_services::archive::ContentAdapter;
        use stevedore_types::platform::All;
        self.count += 1;
        let n = variant;
        let mut opts = ImportOptions {
            format: [Format::Auto, Format::Oci, Format::Docker][(n % 3) as usize],
            compress_blobs: n.is_multiple_of(5),
            ..ImportOptions::default()
        };
        if n.is_multiple_of(2) {
            opts.platform = Box::new(All);
        }
        if n.is_multiple_of(7) {
            opts = ImportOptions {
                platform: Box::new(All),
                ..ImportOptions::oci_name("fuzz/image")
            };
        }
        let importer = ArchiveImporter::new(opts);
        // a failed import aborts its ingest; a successful one leaves none
        if n.is_multiple_of(4) {
            let ns = self
                .daemon
                .namespace(self.count)
                .map_err(|e| format!("daemon store: {e}"))?;
            let store = ContentAdapter(ns.clone());
            let res = importer.import(&store, &mut &input[..]);
            let open = ns
                .list_statuses(&Filter::default())
                .map_err(|e| e.to_string())?;
            if !open.is_empty() {
                return Err(format!(
                    "import into the daemon's store ({res:?}) left ingests {open:?}"
                ));
            }
        } else {
            let root = self.dir.path().join(self.count.to_string());
            let store = DirStore::new(&root).map_err(|e| format!("store: {e}"))?;
            let res = importer.import(&store, &mut &input[..]);
            let open = store.open_ingests().map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir_all(&root);
            if open != 0 {
                return Err(format!("import ({res:?}) left {open} open ingests"));
            }
        }
        Ok(())
    }
}

/// hosts.toml as read from `/etc/containerd/certs.d/registry.example`.
pub fn hosts_toml(input: &[u8]) -> ExecResult {
    use stevedore_remote::hosts::parse_hosts_file;
    let dir = Path::new("/etc/containerd/certs.d/registry.example");
    let file = dir.join("hosts.toml");
    let _ = parse_hosts_file(dir, &file, &text(input));
    Ok(())
}

/// stevedored's config file, checked against the real plugin registry; what
/// parses also prints.
pub struct DaemonConfig {
    registry: stevedore_plugin::Registry,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            registry: stevedore_services::registry::plugins(),
        }
    }
}

impl DaemonConfig {
    pub fn exec(&self, input: &[u8]) -> ExecResult {
        use stevedored::config::Config;
        if let Ok(cfg) = Config::parse(&text(input), "fuzz", &self.registry) {
            let _ = Config::default_toml(&self.registry);
            let _ = format!("{cfg:?}");
        }
        Ok(())
    }
}
