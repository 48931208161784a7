//! SPDY/3.1, as far as Kubernetes' streaming protocols use it: the frame
//! codec ([`frame`]), header blocks and their dictionary-primed zlib
//! compression ([`compress`]), and the server side of a connection
//! ([`conn`]).

pub mod compress;
pub mod conn;
mod dictionary;
pub mod frame;

pub use compress::{HeaderCompressor, HeaderDecompressor, Headers};
pub use frame::{Decoder, Encoder, Frame, FrameError, Head};

#[cfg(test)]
mod tests;
