//! One bounded fuzz run per hostile-input surface (see the crate docs for
//! the knobs). Each run starts with the committed seeds of
//! `corpus/<target>/`, then mutates them for `STEVEDORE_FUZZ_SECS` seconds
//! (20 by default) and prints `fuzz <target>: N executions in S s, seed X`.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use stevedore_fuzz::{samples, tarfix, ExecResult, Fuzzer};
use stevedore_images::content::{Info, Provider};
use stevedore_images::mediatypes::*;
use stevedore_types::filters::Filter;
use stevedore_types::{Descriptor, Digest, Platform, Result};

fn fuzzer(name: &str) -> Fuzzer<'_> {
    Fuzzer::new(name, Path::new(env!("CARGO_TARGET_TMPDIR")))
}

fn text(input: &[u8]) -> String {
    String::from_utf8_lossy(input).into_owned()
}

#[test]
fn filter_parser_survives_mutated_filters() {
    let objects: Vec<BTreeMap<&str, &str>> = vec![
        BTreeMap::from([
            ("name", "docker.io/library/busybox:latest"),
            ("labels.a", "b"),
            ("labels.io.containerd/x", "1"),
        ]),
        BTreeMap::from([("id", "x"), ("topic", "/tasks/exit")]),
        BTreeMap::new(),
    ];
    fuzzer("filter")
        .dictionary(&[
            "==",
            "!=",
            "~=",
            ",",
            "\"",
            "\\",
            ".",
            "labels.",
            "labels.\"",
            "name",
            "id",
            "topic",
            "/",
            "|",
            "\\x41",
            "\\u00e9",
            "\\U0001F600",
            "\\777",
            "\\'",
            "[",
            "(",
            "*",
            "+",
            "{1000}",
            "(?i)",
            "\\p{L}",
            "\n",
            " ",
        ])
        .max_len(4096)
        .run(|input| {
            let s = text(input);
            let parts: Vec<&str> = s.split('\n').collect();
            for f in [Filter::parse(&s), Filter::parse_all(&parts)]
                .into_iter()
                .flatten()
            {
                for o in &objects {
                    let adaptor =
                        |path: &[String]| o.get(path.join(".").as_str()).map(|v| v.to_string());
                    f.matches(&adaptor);
                }
            }
            Ok(())
        });
}

#[test]
fn reference_parsers_survive_mutated_references() {
    use stevedore_images::reference as iref;
    use stevedore_remote::reference::Reference;
    fuzzer("reference")
        .dictionary(&[
            "docker.io/",
            "library/",
            "localhost",
            ":5000",
            "@sha256:",
            "@sha512:",
            ":latest",
            "/",
            ":",
            "@",
            ".",
            "-",
            "__",
            "[::1]",
            "index.docker.io/",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "://",
            "A",
        ])
        .max_len(1024)
        .run(|input| {
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
                // a normalised reference reads back as itself, in either form
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
                    let fam = Reference::parse_normalized(&familiar).map_err(|e| {
                        format!("{s:?}: familiar form {familiar:?} does not parse: {e}")
                    })?;
                    if fam != r {
                        return Err(format!("{s:?}: familiar {familiar:?} reparses as {fam}"));
                    }
                }
                let _ = (r.object(), r.docker_ref(), r.with_tag("x"));
            }
            Ok(())
        });
}

/// Content in memory, for the JSON target.
struct MemStore(HashMap<Digest, Vec<u8>>);

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

#[test]
fn spec_json_decoding_of_manifests_indexes_and_configs_survives_mutated_documents() {
    use stevedore_images::{handlers, image, spec};
    use stevedore_types::platform::{All, MatchPlatform};
    let sample = samples::image();
    let base: HashMap<Digest, Vec<u8>> = sample
        .iter()
        .map(|(d, b)| (d.digest.clone(), b.clone()))
        .collect();
    let mut dict: Vec<String> = sample.iter().map(|(d, _)| d.digest.to_string()).collect();
    dict.extend(
        [
            "\"schemaVersion\":2,",
            "\"mediaType\":",
            "\"manifests\":[",
            "\"layers\":[",
            "\"config\":",
            "\"digest\":",
            "\"size\":",
            "\"platform\":",
            "\"annotations\":{",
            "\"rootfs\":",
            "\"diff_ids\":[",
            "\"fsLayers\":[",
            "\"urls\":[",
            "\"os.version\":",
            "\"variant\":\"v8\"",
            "null",
            "true",
            "[]",
            "{}",
            "\"\\u0000\"",
            "\"\\ud800\"",
            OCI_MANIFEST,
            OCI_INDEX,
            OCI_CONFIG,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
            DOCKER_CONFIG,
            OCI_LAYER_GZIP,
            "sha256:",
            "sha512:",
            "-1",
            "1e400",
        ]
        .map(String::from),
    );
    let media_types = [
        OCI_MANIFEST,
        DOCKER_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST_LIST,
        OCI_CONFIG,
        "",
    ];
    let turn = Mutex::new(0usize);
    fuzzer("spec_json")
        .dictionary(&dict)
        .max_len(64 << 10)
        .run(|input| {
            // one media type per input, in turn: the same bytes as manifest,
            // index, config or untyped
            let mt = {
                let mut c = turn.lock().unwrap();
                *c += 1;
                media_types[*c % media_types.len()]
            };
            let digest = stevedore_images::content::digest_of(input);
            let mut blobs = base.clone();
            blobs.insert(digest.clone(), input.to_vec());
            let store = MemStore(blobs);
            let host = stevedore_types::platform::default_matcher();
            {
                let _ = spec::validate_media_type(input, mt);
                let desc = Descriptor::new(mt, digest.clone(), input.len() as i64);
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
            }
            Ok(())
        });
}

/// Everything about a directory tree that a stray write would change.
fn snapshot_tree(dir: &Path) -> Vec<(PathBuf, u32, u64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let md = std::fs::symlink_metadata(&d).expect("stat sandbox entry");
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
            for e in std::fs::read_dir(&d).expect("read sandbox dir") {
                stack.push(e.expect("sandbox entry").path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn tar_apply_survives_hostile_layers_and_never_writes_outside_the_root() {
    use stevedore_diff::apply::{apply, WhiteoutMode};
    // sandbox/root receives layers; sandbox/sentinel and the sandbox itself
    // must stay exactly as they were
    let sandbox = tempfile::Builder::new()
        .prefix("fuzz-apply-")
        .tempdir()
        .expect("sandbox");
    let root = sandbox.path().join("root");
    let sentinel = sandbox.path().join("sentinel");
    std::fs::create_dir_all(sentinel.join("dir")).unwrap();
    std::fs::write(sentinel.join("canary"), b"do not touch").unwrap();
    std::fs::write(sentinel.join("dir/file"), b"nor this").unwrap();
    std::os::unix::fs::symlink("../root", sentinel.join("link")).unwrap();
    let outside = |p: &Path| {
        snapshot_tree(sandbox.path())
            .into_iter()
            .filter(|(q, ..)| !q.starts_with(p))
            .collect::<Vec<_>>()
    };
    std::fs::create_dir(&root).unwrap();
    let before = outside(&root);
    let abs = sentinel.display().to_string();
    let dict: Vec<String> = [
        "../",
        "../../",
        "/",
        "./",
        "..",
        ".wh.",
        ".wh..wh..opq",
        "sentinel/",
        "canary",
        "../sentinel/canary",
        "../sentinel",
        "/proc/self/root",
        "/proc/self/cwd",
        "//",
        "ustar\0",
        "ustar  \0",
        "././@LongLink",
        "path=",
        "linkpath=",
        "SCHILY.xattr.",
        "security.capability=",
        "trusted.overlay.opaque=y",
        "GNU.sparse.",
        "0000777",
        "0000644",
        "00000000000",
        "77777777777",
    ]
    .into_iter()
    .map(String::from)
    .chain([abs.clone(), format!("{abs}/canary"), format!("{abs}/dir/")])
    .collect();
    let count = Mutex::new(0u64);
    fuzzer("tar_apply")
        .dictionary(&dict)
        .max_len(64 << 10)
        .fixup(tarfix::fix_checksums)
        .run(|input| -> ExecResult {
            let mode = {
                let mut c = count.lock().unwrap();
                *c += 1;
                [WhiteoutMode::Delete, WhiteoutMode::Overlay][(*c % 2) as usize]
            };
            let res = apply(&root, input, mode);
            // the seeds aim an absolute symlink at the host's /tmp too
            if Path::new("/tmp/fuzz-escape").exists() {
                return Err(format!("apply ({mode:?}, result {res:?}) wrote /tmp/fuzz-escape"));
            }
            let after = outside(&root);
            if after != before {
                return Err(format!(
                    "apply ({mode:?}, result {res:?}) changed the sandbox outside its root:\nbefore {before:?}\nafter {after:?}"
                ));
            }
            // the next input starts from an empty root (removal never follows links)
            for e in std::fs::read_dir(&root).map_err(|e| format!("read root: {e}"))? {
                let p = e.map_err(|e| format!("read root: {e}"))?.path();
                let gone = match std::fs::symlink_metadata(&p) {
                    Ok(md) if md.is_dir() => std::fs::remove_dir_all(&p),
                    _ => std::fs::remove_file(&p),
                };
                gone.map_err(|e| format!("reset root: remove {}: {e}", p.display()))?;
            }
            Ok(())
        });
}

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
        if self.db.is_none() || self.uses >= 300 {
            self.db = None;
            let _ = std::fs::remove_dir_all(&self.dir);
            std::fs::create_dir_all(&self.dir)?;
            let db = stevedore_metadata::Db::open(&self.dir.join("meta.db"))?;
            let store = stevedore_content::local::LocalStore::open(&self.dir.join("content"))?;
            db.attach_content(store, Default::default())?;
            self.db = Some(std::sync::Arc::new(db));
            self.uses = 0;
        }
        self.uses += 1;
        Ok(self
            .db
            .as_ref()
            .unwrap()
            .content(&format!("fuzz-{n}"), None))
    }
}

#[test]
fn archive_import_survives_mutated_archives() {
    use stevedore_content::Store as _;
    use stevedore_images::archive::{ArchiveImporter, Format, ImportOptions, Importer};
    use stevedore_images::testing::DirStore;
    use stevedore_services::archive::ContentAdapter;
    use stevedore_types::platform::All;
    // tmpfs when there is one: the stores are rewritten for every input
    let shm = Path::new("/dev/shm");
    let dir = tempfile::Builder::new()
        .prefix("fuzz-import-")
        .tempdir_in(if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        })
        .expect("store dir");
    let daemon = Mutex::new(DaemonStore {
        dir: dir.path().join("daemon"),
        db: None,
        uses: 0,
    });
    let count = Mutex::new(0u64);
    fuzzer("archive_import")
        .dictionary(&[
            "oci-layout",
            "index.json",
            "manifest.json",
            "repositories",
            "blobs/sha256/",
            "blobs/sha512/",
            "layer.tar",
            "../",
            "/",
            "\"Layers\":[",
            "\"Config\":",
            "\"RepoTags\":[",
            "\"imageLayoutVersion\":\"1.0.0\"",
            "\"manifests\":[",
            "io.containerd.image.name",
            "org.opencontainers.image.ref.name",
            "sha256:",
        ])
        // gzip and zstd magic: layers are sniffed for compression
        .dictionary(&[&[0x1f_u8, 0x8b, 0x08][..], &[0x28, 0xb5, 0x2f, 0xfd][..]])
        .max_len(256 << 10)
        .fixup(tarfix::fix_checksums)
        .run(|input| -> ExecResult {
            let n = {
                let mut c = count.lock().unwrap();
                *c += 1;
                *c
            };
            let mut opts = ImportOptions {
                format: [Format::Auto, Format::Oci, Format::Docker][(n % 3) as usize],
                compress_blobs: n % 5 == 0,
                ..ImportOptions::default()
            };
            if n % 2 == 0 {
                opts.platform = Box::new(All);
            }
            if n % 7 == 0 {
                opts = ImportOptions {
                    platform: Box::new(All),
                    ..ImportOptions::oci_name("fuzz/image")
                };
            }
            let importer = ArchiveImporter::new(opts);
            // a failed import aborts its ingest; a successful one leaves none
            if n % 4 == 0 {
                let ns = daemon
                    .lock()
                    .unwrap()
                    .namespace(n)
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
                let root = dir.path().join(n.to_string());
                let store = DirStore::new(&root).map_err(|e| format!("store: {e}"))?;
                let res = importer.import(&store, &mut &input[..]);
                let open = store.open_ingests().map_err(|e| e.to_string())?;
                let _ = std::fs::remove_dir_all(&root);
                if open != 0 {
                    return Err(format!("import ({res:?}) left {open} open ingests"));
                }
            }
            Ok(())
        });
}

#[test]
fn hosts_toml_parser_survives_mutated_files() {
    use stevedore_remote::hosts::parse_hosts_file;
    let dir = Path::new("/etc/containerd/certs.d/registry.example");
    let file = dir.join("hosts.toml");
    fuzzer("hosts_toml")
        .dictionary(&[
            "server = ",
            "[host.\"",
            "\"]\n",
            "capabilities = [\"pull\", \"resolve\", \"push\"]\n",
            "ca = ",
            "client = [[",
            "skip_verify = true\n",
            "[header]\n",
            "override_path = true\n",
            "https://",
            "http://",
            "[::1]:5000",
            ":65536",
            "\"\"\"",
            "'''",
            "= [",
            "]]",
            "\n",
            "{ a = 1 }",
            "1979-05-27T07:32:00Z",
            "inf",
            "nan",
            "0x1F",
            "\\u0000",
        ])
        .max_len(16 << 10)
        .run(|input| {
            let s = text(input);
            let _ = parse_hosts_file(dir, &file, &s);
            Ok(())
        });
}

#[test]
fn daemon_config_parser_survives_mutated_configs() {
    use stevedored::config::Config;
    let registry = stevedore_services::registry::plugins();
    fuzzer("daemon_config")
        .dictionary(&[
            "version = 2\n",
            "root = ",
            "state = ",
            "disabled_plugins = [",
            "required_plugins = [",
            "[grpc]\n",
            "address = ",
            "uid = ",
            "gid = ",
            "[debug]\n",
            "level = ",
            "format = ",
            "[plugins.\"",
            "io.containerd.gc.v1.scheduler",
            "io.containerd.metadata.v1.bolt",
            "io.containerd.snapshotter.v1.overlayfs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.grpc.v1.cri",
            "\"]\n",
            "pause_threshold = ",
            "deletion_threshold = ",
            "mutation_threshold = ",
            "schedule_delay = ",
            "startup_delay = ",
            "ingest_expiry = ",
            "\"0s\"",
            "\"-1h\"",
            "1e400",
            "-1",
            "4294967296",
            "\"\"\"",
            "[[",
            "]]",
            "\n",
        ])
        .max_len(16 << 10)
        .run(|input| {
            let s = text(input);
            if let Ok(cfg) = Config::parse(&s, "fuzz", &registry) {
                // what parses also prints
                let _ = Config::default_toml(&registry);
                let _ = format!("{cfg:?}");
            }
            Ok(())
        });
}
