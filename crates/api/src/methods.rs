//! Every RPC of the wire contract by path (`/package.Service/Method`) with
//! its streaming kind, generated from `proto/` by the build script.

/// Which sides stream (go-grpc-prometheus' `grpc_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl MethodKind {
    /// The `grpc_type` label value.
    pub fn label(self) -> &'static str {
        match self {
            MethodKind::Unary => "unary",
            MethodKind::ClientStream => "client_stream",
            MethodKind::ServerStream => "server_stream",
            MethodKind::BidiStream => "bidi_stream",
        }
    }
}

include!(concat!(env!("OUT_DIR"), "/methods.rs"));

/// The kind of the RPC at `path`, if the contract has it.
pub fn kind(path: &str) -> Option<MethodKind> {
    METHODS
        .binary_search_by(|(p, _)| p.cmp(&path))
        .ok()
        .map(|i| METHODS[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_the_kinds_of_containerd_rpcs() {
        assert_eq!(
            kind("/containerd.services.tasks.v1.Tasks/Create"),
            Some(MethodKind::Unary)
        );
        assert_eq!(
            kind("/containerd.services.content.v1.Content/Write"),
            Some(MethodKind::BidiStream)
        );
        assert_eq!(
            kind("/containerd.services.events.v1.Events/Subscribe"),
            Some(MethodKind::ServerStream)
        );
        assert_eq!(kind("/nope.Nope/X"), None);
    }
}
