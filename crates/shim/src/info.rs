//! `-info` (containerd 2.x's runtime info, what `ctr plugins inspect-runtime`
//! shows): stdin holds the runtime options as a protobuf `Any` (or nothing);
//! stdout gets `containerd.types.RuntimeInfo`, as containerd's runc shim
//! writes it: the runtime name, the shim's version, the options echoed, and
//! the OCI runtime's `features` JSON (omitted when the runtime has no
//! `features` command, as containerd omits it).
//!
//! The message is encoded by hand (five fields), as `options.rs` decodes:
//! the shim carries no descriptor for containerd's types.

use crate::error::{Error, Result};
use crate::options::RuncOptions;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use std::io::{Read, Write};

/// The runtime name containerd's runc shim reports; this shim serves it.
const RUNTIME_NAME: &str = "io.containerd.runc.v2";
/// typeurl's name for the runtime-spec `features.Features` (JSON-encoded).
const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// Answer `-info`: options from stdin, `RuntimeInfo` to stdout.
pub fn info() -> Result<()> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| Error::io("read runtime options from stdin", e))?;
    let options =
        if input.is_empty() {
            None
        } else {
            Some(Any::parse_from_bytes(&input).map_err(|e| {
                Error::InvalidArgument(format!("failed to read runtime options: {e}"))
            })?)
        };
    let runc_options = match &options {
        Some(a) => RuncOptions::from_any(a)?,
        None => RuncOptions::default(),
    };
    let binary = runc_options
        .binary_name
        .clone()
        .unwrap_or_else(crate::runc::default_runtime);
    let path = crate::runc::look_path(&binary).map_err(|e| {
        Error::FailedPrecondition(format!("failed to look up the path of {binary:?}: {e}"))
    })?;
    let features = std::process::Command::new(&path)
        .arg("features")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| o.stdout);
    let out = encode(options.as_ref(), features.as_deref());
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| Error::io("write runtime info", e))
}

/// `RuntimeInfo { name = 1, version = 2 { version = 1, revision = 2 },
/// options = 3, features = 4 }`.
fn encode(options: Option<&Any>, features: Option<&[u8]>) -> Vec<u8> {
    let mut version = Vec::new();
    field(&mut version, 1, env!("CARGO_PKG_VERSION").as_bytes());
    let mut out = Vec::new();
    field(&mut out, 1, RUNTIME_NAME.as_bytes());
    field(&mut out, 2, &version);
    if let Some(o) = options {
        field(&mut out, 3, &any(&o.type_url, &o.value));
    }
    if let Some(f) = features {
        field(&mut out, 4, &any(FEATURES_TYPE_URL, f));
    }
    out
}

fn any(type_url: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    field(&mut out, 1, type_url.as_bytes());
    field(&mut out, 2, value);
    out
}

/// One length-delimited field (wire type 2).
fn field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    varint(out, u64::from(number << 3 | 2));
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::CodedInputStream;

    /// Read the length-delimited fields of a message.
    fn fields(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut input = CodedInputStream::from_bytes(bytes);
        let mut out = Vec::new();
        while let Some(tag) = input.read_raw_tag_or_eof().unwrap() {
            assert_eq!(tag & 7, 2);
            out.push((tag >> 3, input.read_bytes().unwrap()));
        }
        out
    }

    #[test]
    fn runtime_info_carries_name_version_options_and_features() {
        let opts = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![0x32, 4, b'c', b'r', b'u', b'n'],
            ..Default::default()
        };
        let out = encode(Some(&opts), Some(b"{\"ociVersionMin\":\"1.0.0\"}"));
        let f = fields(&out);
        assert_eq!(f[0], (1, RUNTIME_NAME.as_bytes().to_vec()));
        assert_eq!(fields(&f[1].1)[0].1, env!("CARGO_PKG_VERSION").as_bytes());
        let o = fields(&f[2].1);
        assert_eq!(f[2].0, 3);
        assert_eq!(o[0].1, b"containerd.runc.v1.Options");
        assert_eq!(o[1].1, opts.value);
        assert_eq!(f[3].0, 4);
        assert_eq!(fields(&f[3].1)[0].1, FEATURES_TYPE_URL.as_bytes());
        // no options, no features: name and version only
        assert_eq!(fields(&encode(None, None)).len(), 2);
    }
}
