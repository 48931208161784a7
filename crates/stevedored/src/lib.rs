//! stevedored as a library: the parts of the daemon that tools and tests use
//! without starting it (the config parser, which the fuzz targets drive).

pub mod config;
