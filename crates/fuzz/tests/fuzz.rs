//! One bounded fuzz run per hostile-input surface (see the crate docs for
//! the knobs). Each run starts with the committed seeds of
//! `corpus/<target>/`, then mutates them for `STEVEDORE_FUZZ_SECS` seconds
//! (20 by default) and prints `fuzz <target>: N executions in S s, seed X`.

use std::path::Path;
use stevedore_fuzz::{tarfix, targets, Fuzzer};
use stevedore_images::mediatypes::*;

fn fuzzer(name: &str) -> Fuzzer<'_> {
    Fuzzer::new(name, Path::new(env!("CARGO_TARGET_TMPDIR")))
}

#[test]
fn filter_parser_survives_mutated_filters() {
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
        .run(targets::filter);
}

#[test]
fn reference_parsers_survive_mutated_references() {
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
        .run(targets::reference);
}

#[test]
fn spec_json_decoding_of_manifests_indexes_and_configs_survives_mutated_documents() {
    let target = targets::SpecJson::default();
    let mut dict = target.digests();
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
    let mut turn = 0u64;
    fuzzer("spec_json")
        .dictionary(&dict)
        .max_len(64 << 10)
        .run(|input| {
            // one media type per input, in turn: the same bytes as manifest,
            // index, config or untyped
            turn += 1;
            target.exec(input, turn)
        });
}

#[test]
fn tar_apply_survives_hostile_layers_and_never_writes_outside_the_root() {
    // sandbox/root receives layers; sandbox/sentinel and the sandbox itself
    // must stay exactly as they were
    let target = targets::TarApply::new().expect("layer apply sandbox");
    let sentinel = target.sentinel();
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
    let mut count = 0u64;
    fuzzer("tar_apply")
        .dictionary(&dict)
        .max_len(64 << 10)
        .fixup(tarfix::fix_checksums)
        .run(|input| {
            // alternate whiteout modes; every fourth tar goes through gzip
            count += 1;
            target.exec(input, count, count % 4 == 1)
        });
}

#[test]
fn archive_import_survives_mutated_archives() {
    let mut target = targets::ArchiveImport::new().expect("archive import stores");
    let mut count = 0u64;
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
        .run(|input| {
            count += 1;
            target.exec(input, count)
        });
}

#[test]
fn hosts_toml_parser_survives_mutated_files() {
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
        .run(targets::hosts_toml);
}

#[test]
fn daemon_config_parser_survives_mutated_configs() {
    let target = targets::DaemonConfig::default();
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
        .run(|input| target.exec(input));
}
