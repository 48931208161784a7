//! containerd's runc options (`containerd.runc.v1.Options`, the container's
//! runtime options or ctr's task options), decoded by hand: the shim reads
//! two fields and does not carry a descriptor for the message.

use crate::error::{Error, Result};
use containerd_shim_protos::protobuf::rt::WireType;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::CodedInputStream;

/// The fields of the runc options the shim acts on.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RuncOptions {
    /// `shim_cgroup` (field 3): the cgroup the shim joins at start.
    pub shim_cgroup: Option<String>,
    /// `binary_name` (field 6): the OCI runtime binary instead of runc.
    pub binary_name: Option<String>,
    /// `root` (field 7): runc's state root instead of the shim's default
    /// (the namespace is appended, as containerd's shim does).
    pub root: Option<String>,
}

impl RuncOptions {
    /// Decode the options from an `Any`; other message types carry none.
    pub fn from_any(any: &Any) -> Result<RuncOptions> {
        if !any.type_url.ends_with("containerd.runc.v1.Options")
            && !any.type_url.ends_with("runtimeoptions.v1.Options")
        {
            return Ok(RuncOptions::default());
        }
        Self::decode(&any.value)
    }

    /// Decode `containerd.runc.v1.Options` bytes.
    pub fn decode(bytes: &[u8]) -> Result<RuncOptions> {
        let bad = |e: containerd_shim_protos::protobuf::Error| {
            Error::InvalidArgument(format!("runc options: {e}"))
        };
        let mut o = RuncOptions::default();
        let mut input = CodedInputStream::from_bytes(bytes);
        while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
            let (field, wire) = (tag >> 3, tag & 7);
            match (field, wire) {
                (3, 2) => o.shim_cgroup = Some(input.read_string().map_err(bad)?),
                (6, 2) => o.binary_name = Some(input.read_string().map_err(bad)?),
                (7, 2) => o.root = Some(input.read_string().map_err(bad)?),
                _ => {
                    let wt = WireType::new(wire).ok_or_else(|| {
                        Error::InvalidArgument(format!("runc options: bad wire type {wire}"))
                    })?;
                    input.skip_field(wt).map_err(bad)?;
                }
            }
        }
        o.shim_cgroup = o.shim_cgroup.filter(|s| !s.is_empty());
        o.binary_name = o.binary_name.filter(|s| !s.is_empty());
        o.root = o.root.filter(|s| !s.is_empty());
        if let Some(root) = &o.root {
            if !root.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "runc options: root {root:?} must be an absolute path"
                )));
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u8, s: &str) -> Vec<u8> {
        let mut v = vec![(n << 3) | 2, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn reads_shim_cgroup_binary_name_and_root_and_skips_the_rest() {
        let mut bytes = vec![0x08, 0x01]; // no_pivot_root = true
        bytes.extend(field(3, "/shims/a"));
        bytes.extend(field(6, "crun"));
        bytes.extend(field(7, "/run/x"));
        let o = RuncOptions::decode(&bytes).unwrap();
        assert_eq!(o.shim_cgroup.as_deref(), Some("/shims/a"));
        assert_eq!(o.binary_name.as_deref(), Some("crun"));
        assert_eq!(o.root.as_deref(), Some("/run/x"));
        assert!(matches!(
            RuncOptions::decode(&field(7, "relative/root")),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn ignores_other_message_types_and_rejects_garbage() {
        let mut any = Any::new();
        any.type_url = "types.containerd.io/other".into();
        any.value = vec![0xff];
        assert_eq!(RuncOptions::from_any(&any).unwrap(), RuncOptions::default());
        any.type_url = "containerd.runc.v1.Options".into();
        assert!(matches!(
            RuncOptions::from_any(&any),
            Err(Error::InvalidArgument(_))
        ));
    }
}
