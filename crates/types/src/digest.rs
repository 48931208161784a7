//! Content digests (`sha256:<64 hex>`, `sha512:<128 hex>`), validated on parse.

use crate::error::Error;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A digest algorithm stevedore accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
    /// Length of the hex-encoded value.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated digest: algorithm plus lower-case hex value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Build from an algorithm and hex string, validating both.
    pub fn new(algorithm: Algorithm, hex: &str) -> Result<Self, Error> {
        if hex.len() != algorithm.hex_len() {
            return Err(Error::invalid(format!(
                "invalid digest {algorithm}:{hex}: {algorithm} needs {} hex characters, got {}",
                algorithm.hex_len(),
                hex.len()
            )));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(Error::invalid(format!(
                "invalid digest {algorithm}:{hex}: value must be lower-case hex"
            )));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }
    /// Build a sha256 digest from raw hash bytes.
    pub fn from_sha256_bytes(bytes: &[u8]) -> Self {
        Digest {
            algorithm: Algorithm::Sha256,
            hex: to_hex(bytes),
        }
    }
    /// Build a sha512 digest from raw hash bytes.
    pub fn from_sha512_bytes(bytes: &[u8]) -> Self {
        Digest {
            algorithm: Algorithm::Sha512,
            hex: to_hex(bytes),
        }
    }
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    /// The hex-encoded value, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let (alg, hex) = s.split_once(':').ok_or_else(|| {
            Error::invalid(format!("invalid digest {s:?}: expected <algorithm>:<hex>"))
        })?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => {
                return Err(Error::invalid(format!(
                    "invalid digest {s:?}: unsupported algorithm {other:?}"
                )))
            }
        };
        Digest::new(algorithm, hex)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_sha256() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY);
    }

    #[test]
    fn parses_sha512() {
        let s = format!("sha512:{}", "a".repeat(128));
        assert_eq!(s.parse::<Digest>().unwrap().to_string(), s);
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            &EMPTY.to_uppercase(),
            &format!("{EMPTY}0"),
            "sha256:zz0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            let err = bad.parse::<Digest>().unwrap_err();
            assert_eq!(err.kind, crate::ErrorKind::InvalidArgument, "{bad}");
            assert!(err.message.contains("invalid digest"), "{}", err.message);
        }
    }

    #[test]
    fn builds_from_bytes() {
        let d = Digest::from_sha256_bytes(&[0xab; 32]);
        assert_eq!(d.hex(), "ab".repeat(32));
    }

    #[test]
    fn serde_round_trip() {
        let d: Digest = EMPTY.parse().unwrap();
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&j).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:x\"").is_err());
    }
}
