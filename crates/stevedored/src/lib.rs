//! stevedored as a library: the parts of the daemon that tools and tests use
//! without starting it (the config parser, which the fuzz targets drive),
//! and the rooms `main` wires together: logging, and the HTTP endpoints
//! beside the gRPC socket (debug with pprof profiles, Prometheus metrics).

mod cgroups;
pub mod config;
pub mod debug;
pub mod endpoint;
pub mod logging;
pub mod metrics;
