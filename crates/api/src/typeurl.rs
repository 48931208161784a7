//! Type URLs for `google.protobuf.Any` payloads, as containerd's typeurl
//! package writes them: proto messages use their full name (no URL prefix).

use prost::Name;

/// Pack a message into an `Any` with containerd's type URL convention.
pub fn to_any<M: prost::Message + Name>(m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::full_name(),
        value: m.encode_to_vec(),
    }
}

/// Unpack an `Any` if its type URL names `M` (with or without a URL prefix).
pub fn from_any<M: prost::Message + Name + Default>(a: &prost_types::Any) -> Option<M> {
    let name = a.type_url.rsplit('/').next().unwrap_or("");
    if name != M::full_name() {
        return None;
    }
    M::decode(a.value.as_slice()).ok()
}
