//! The shim's command line, as containerd passes it to runtime v2 shims
//! (`-namespace <ns> -address <addr> -publish-binary <bin> -id <id>
//! [-bundle <path>] [-debug] start|delete`), plus the internal `serve`.

use crate::error::{Error, Result};
use stevedore_types::identifiers;

/// Parsed flags and the action.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub namespace: String,
    pub address: String,
    pub id: String,
    pub bundle: String,
    pub socket: String,
    /// A listening socket inherited from `start` (so `start` can answer
    /// without waiting for the server to bind).
    pub listen_fd: Option<i32>,
    pub debug: bool,
    pub action: String,
}

impl Flags {
    /// Parse `args` (without the program name); the bundle defaults to the
    /// working directory.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Flags {
        let mut f = Flags::default();
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            let mut val = || args.next().unwrap_or_default();
            match a.trim_start_matches('-') {
                "namespace" => f.namespace = val(),
                "address" => f.address = val(),
                "id" => f.id = val(),
                "bundle" => f.bundle = val(),
                "socket" => f.socket = val(),
                "listen-fd" => f.listen_fd = val().parse().ok(),
                "publish-binary" => {
                    val();
                }
                "debug" => f.debug = true,
                "v" | "version" => f.action = "version".into(),
                "info" => f.action = "info".into(),
                other if !a.starts_with('-') => f.action = other.to_string(),
                _ => {}
            }
        }
        if f.bundle.is_empty() {
            f.bundle = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
        }
        f
    }

    /// The task id and namespace become path components: both must pass
    /// containerd's identifier rule.
    pub fn validate(&self) -> Result<()> {
        identifiers::validate(&self.namespace)
            .map_err(|e| Error::InvalidArgument(format!("-namespace: {}", e.message)))?;
        identifiers::validate(&self.id)
            .map_err(|e| Error::InvalidArgument(format!("-id: {}", e.message)))?;
        if self.bundle.is_empty() {
            return Err(Error::InvalidArgument("no bundle directory".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Flags {
        Flags::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn parses_containerds_command_line() {
        let f = parse("-namespace default -address /run/c.sock -publish-binary /bin/x -id abc -bundle /b -debug start");
        assert_eq!(
            (
                f.namespace.as_str(),
                f.address.as_str(),
                f.id.as_str(),
                f.bundle.as_str()
            ),
            ("default", "/run/c.sock", "abc", "/b")
        );
        assert!(f.debug);
        assert_eq!(f.action, "start");
        f.validate().unwrap();
    }

    #[test]
    fn refuses_ids_that_are_not_one_path_component() {
        for bad in [
            "-namespace default -id ../../etc -bundle /b start",
            "-namespace ../x -id abc -bundle /b start",
            "-namespace default -id a/b -bundle /b start",
        ] {
            let e = parse(bad).validate().unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
            assert!(e.to_string().contains("must match"), "{e}");
        }
    }
}
