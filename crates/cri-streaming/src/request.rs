//! The three streaming requests, as plain data (the CRI service copies the
//! fields of runtime.v1's ExecRequest, AttachRequest and PortForwardRequest),
//! and kubelet's validation of them.

use crate::Error;

/// runtime.v1 ExecRequest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// runtime.v1 AttachRequest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub stdin: bool,
    pub tty: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// runtime.v1 PortForwardRequest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub pod_sandbox_id: String,
    /// Ports for WebSocket clients (SPDY clients name the port per stream).
    pub port: Vec<i32>,
}

fn invalid(msg: &str) -> Error {
    Error::InvalidArgument(msg.to_string())
}

fn validate_stdio(
    container_id: &str,
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    conjunction: &str,
) -> Result<(), Error> {
    if container_id.is_empty() {
        return Err(invalid("missing required container_id"));
    }
    if tty && stderr {
        // a terminal multiplexes stdout and stderr into one stream
        return Err(invalid("tty and stderr cannot both be true"));
    }
    if !stdin && !stdout && !stderr {
        return Err(Error::InvalidArgument(format!(
            "one of stdin, stdout, {conjunction} stderr must be set"
        )));
    }
    Ok(())
}

impl ExecRequest {
    /// kubelet's checks, plus a command to run (an empty one cannot start).
    pub fn validate(&self) -> Result<(), Error> {
        validate_stdio(
            &self.container_id,
            self.tty,
            self.stdin,
            self.stdout,
            self.stderr,
            "or",
        )?;
        if self.cmd.is_empty() || self.cmd[0].is_empty() {
            return Err(invalid("missing required cmd"));
        }
        Ok(())
    }
}

impl AttachRequest {
    /// kubelet's checks.
    pub fn validate(&self) -> Result<(), Error> {
        validate_stdio(
            &self.container_id,
            self.tty,
            self.stdin,
            self.stdout,
            self.stderr,
            "and",
        )
    }
}

impl PortForwardRequest {
    /// kubelet's check, plus ports that fit the wire's 16 bits.
    pub fn validate(&self) -> Result<(), Error> {
        if self.pod_sandbox_id.is_empty() {
            return Err(invalid("missing required pod_sandbox_id"));
        }
        if let Some(p) = self.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Error::InvalidArgument(format!(
                "port {p} is out of range 1-65535"
            )));
        }
        Ok(())
    }
}
