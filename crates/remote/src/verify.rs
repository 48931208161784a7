//! Incremental digests for verifying bytes while they stream.

use sha2::Digest as _;
use stevedore_types::{Algorithm, Digest};

/// A running sha256/sha512 over the bytes seen so far. Clone it to checkpoint.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }
    /// The digest of everything hashed so far.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::from_sha256_bytes(&h.finalize()[..]),
            Hasher::Sha512(h) => Digest::from_sha512_bytes(&h.finalize()[..]),
        }
    }
}

/// The sha256 digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> Digest {
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_of_empty_input_is_the_well_known_value() {
        assert_eq!(
            super::sha256(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
