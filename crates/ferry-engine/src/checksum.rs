//! Integrity checks a task can ask for, computed while the bytes are written.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A hash algorithm ferry can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// MD5 (legacy mirrors still publish it).
    Md5,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
    /// BLAKE3: the fast one.
    Blake3,
}

impl Algorithm {
    /// Every algorithm, in the order of [`Algorithm::name`]'s documentation.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Md5,
        Algorithm::Sha1,
        Algorithm::Sha256,
        Algorithm::Sha512,
        Algorithm::Blake3,
    ];

    /// The lower-case name: `md5`, `sha1`, `sha256`, `sha512`, `blake3`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Blake3 => "blake3",
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 | Algorithm::Blake3 => 32,
            Algorithm::Sha512 => 64,
        }
    }

    /// A fresh incremental hasher.
    pub fn hasher(self) -> Hasher {
        use sha2::Digest as _;
        match self {
            Algorithm::Md5 => Hasher::Md5(md5::Md5::new()),
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Box::new(sha2::Sha512::new())),
            Algorithm::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Algorithm, String> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown checksum algorithm {s:?}: expected md5, sha1, sha256, sha512 or blake3"
                )
            })
    }
}

/// An expected digest: `sha256:3a7b…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksum {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The expected digest, lower-case hex.
    pub expected: String,
}

impl FromStr for Checksum {
    type Err = String;

    /// Parses `ALGO:HEX`.
    fn from_str(s: &str) -> Result<Checksum, String> {
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| format!("checksum {s:?} must look like ALGO:HEX, e.g. sha256:9f86…"))?;
        Checksum::new(algo.parse()?, hex)
    }
}

impl Checksum {
    /// An expected digest, checked for length and hex digits.
    pub fn new(algorithm: Algorithm, hex_digest: &str) -> Result<Checksum, String> {
        let expected = hex_digest.trim().to_ascii_lowercase();
        let valid_hex = expected.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid_hex || expected.len() != algorithm.digest_len() * 2 {
            return Err(format!(
                "{algorithm} digest {hex_digest:?} must be {} hex digits",
                algorithm.digest_len() * 2
            ));
        }
        Ok(Checksum {
            algorithm,
            expected,
        })
    }
}

/// An incremental hasher for one of the [`Algorithm`]s.
pub enum Hasher {
    /// MD5.
    Md5(md5::Md5),
    /// SHA-1.
    Sha1(sha1::Sha1),
    /// SHA-256.
    Sha256(sha2::Sha256),
    /// SHA-512 (boxed: its state is large).
    Sha512(Box<sha2::Sha512>),
    /// BLAKE3 (boxed: its state is large).
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The digest, lower-case hex.
    pub fn finish_hex(self) -> String {
        use sha2::Digest as _;
        match self {
            Hasher::Md5(h) => hex::encode(h.finalize()),
            Hasher::Sha1(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
            Hasher::Blake3(h) => h.finalize().to_hex().to_string(),
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests_of_abc() {
        let cases = [
            (Algorithm::Md5, "900150983cd24fb0d6963f7d28e17f72"),
            (Algorithm::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d"),
            (
                Algorithm::Sha256,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                Algorithm::Blake3,
                "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85",
            ),
        ];
        for (algorithm, expected) in cases {
            let mut h = algorithm.hasher();
            h.update(b"a");
            h.update(b"bc");
            assert_eq!(h.finish_hex(), expected, "{algorithm}");
        }
        let mut h = Algorithm::Sha512.hasher();
        h.update(b"abc");
        assert!(h.finish_hex().starts_with("ddaf35a193617aba"));
    }

    #[test]
    fn parses_and_rejects_checksums() {
        let c: Checksum = "SHA256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"
            .parse()
            .unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert!(c.expected.starts_with("ba7816bf"));
        assert!(
            "sha256:abc"
                .parse::<Checksum>()
                .unwrap_err()
                .contains("64 hex")
        );
        assert!(
            "crc32:00"
                .parse::<Checksum>()
                .unwrap_err()
                .contains("unknown")
        );
        assert!(
            "deadbeef"
                .parse::<Checksum>()
                .unwrap_err()
                .contains("ALGO:HEX")
        );
        assert!(Checksum::new(Algorithm::Md5, "zz").is_err());
    }
}
