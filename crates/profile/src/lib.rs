//! Profiles of the running process in the formats Go's `net/http/pprof`
//! serves, so `ctr pprof` and `go tool pprof` read them: CPU (sampling on
//! SIGPROF), heap (a sampling global allocator, [`heap::Sampling`]) and a
//! dump of every thread's stack. Symbols are resolved in the process, from
//! the binary's symbol and line tables, and the loaded debug information is
//! dropped after each profile.

pub mod cpu;
pub mod heap;
mod proto;
mod symbols;
pub mod threads;

/// Why a profile could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Go's wording for the same situation.
    #[error("cpu profiling already in use")]
    Busy,
    #[error("cpu profile: {0}")]
    Cpu(String),
    #[error("thread dump: {0}")]
    Threads(String),
}
