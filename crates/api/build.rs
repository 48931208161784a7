//! Compiles the containerd wire contract in `proto/` with a pure-Rust protobuf
//! compiler (protox), so no system `protoc` is needed.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    // a new file anywhere under proto/ must rebuild: watch the directories too
    println!("cargo:rerun-if-changed={}", root.display());
    for f in &files {
        if let Some(dir) = f.parent() {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let rel: Vec<PathBuf> = files
        .iter()
        .map(|f| f.strip_prefix(&root).unwrap().to_path_buf())
        .collect();
    let fds = protox::compile(&rel, [&root]).expect("compile containerd protos");
    write_methods(&fds);
    let mut config = tonic_prost_build::Config::new();
    // `Name` impls give each message its full proto name, used for Any type URLs
    config.enable_type_names();
    // the CRI's messages serialise to JSON for `crictl inspect`'s verbose
    // info, with the proto field names (as the Go types' JSON tags)
    config.type_attribute(".runtime.v1", "#[derive(serde::Serialize)]");
    // blob bytes as `bytes::Bytes`: decoded as slices of the receive buffer
    // and encoded from the chunk read, instead of a copy into a `Vec` each way
    config.bytes([
        ".containerd.services.content.v1.WriteContentRequest.data",
        ".containerd.services.content.v1.ReadContentResponse.data",
        ".containerd.types.transfer.Data.data",
    ]);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // no `connect` constructors: clients dial the unix socket themselves, and
        // the shim API has an RPC named Connect that would clash with them
        .build_transport(false)
        .include_file("mod.rs")
        .compile_fds_with_config(fds, config)
        .expect("generate gRPC code");
}

fn collect(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
}

/// `methods.rs`: every RPC's path and kind, which the metrics layer labels
/// requests with (go-grpc-prometheus' `grpc_type`).
fn write_methods(fds: &prost_types::FileDescriptorSet) {
    let mut rows = Vec::new();
    for f in &fds.file {
        let pkg = f.package();
        for s in &f.service {
            for m in &s.method {
                let kind = match (m.client_streaming(), m.server_streaming()) {
                    (false, false) => "Unary",
                    (true, false) => "ClientStream",
                    (false, true) => "ServerStream",
                    (true, true) => "BidiStream",
                };
                rows.push(format!(
                    "    (\"/{pkg}.{}/{}\", MethodKind::{kind}),\n",
                    s.name(),
                    m.name()
                ));
            }
        }
    }
    rows.sort();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("methods.rs");
    std::fs::write(
        out,
        format!(
            "pub const METHODS: &[(&str, MethodKind)] = &[\n{}];\n",
            rows.concat()
        ),
    )
    .unwrap();
}
