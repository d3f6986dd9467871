//! `preprocessing.compression` (and `diffsql synth --compression`): how cached vectors are compressed, parsed
//! once from `none`, `snappy`, `zstd` or `zstd(N)` so a wrong value is an error naming the key.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// The compression of a cache's vector column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum VectorCompression {
    /// PLAIN and uncompressed: a scan reads at memory speed.
    #[default]
    None,
    Snappy,
    /// zstd at a level (1–22), or zstd's default level.
    Zstd(Option<i32>),
}

impl FromStr for VectorCompression {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "none" | "uncompressed" => Self::None,
            "snappy" => Self::Snappy,
            "zstd" => Self::Zstd(None),
            _ => match s
                .strip_prefix("zstd(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|n| n.parse::<i32>().ok())
            {
                Some(level) if (1..=22).contains(&level) => Self::Zstd(Some(level)),
                Some(level) => bail!("zstd level {level} is out of range: use 1 to 22"),
                None => bail!("unknown compression {s:?}: use none, snappy, zstd or zstd(N)"),
            },
        })
    }
}

impl TryFrom<String> for VectorCompression {
    type Error = anyhow::Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<VectorCompression> for String {
    fn from(c: VectorCompression) -> Self {
        c.to_string()
    }
}

impl fmt::Display for VectorCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Snappy => f.write_str("snappy"),
            Self::Zstd(None) => f.write_str("zstd"),
            Self::Zstd(Some(level)) => write!(f, "zstd({level})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_parses_and_prints_back() {
        for (s, c) in [
            ("none", VectorCompression::None),
            ("snappy", VectorCompression::Snappy),
            ("zstd", VectorCompression::Zstd(None)),
            ("zstd(3)", VectorCompression::Zstd(Some(3))),
        ] {
            assert_eq!(s.parse::<VectorCompression>().unwrap(), c);
            assert_eq!(c.to_string(), s);
        }
        assert_eq!(
            "uncompressed".parse::<VectorCompression>().unwrap(),
            VectorCompression::None
        );
    }

    #[test]
    fn bad_values_say_what_is_allowed() {
        let e = "lz4".parse::<VectorCompression>().unwrap_err().to_string();
        assert!(e.contains("lz4") && e.contains("zstd(N)"), "{e}");
        let e = "zstd(99)".parse::<VectorCompression>().unwrap_err().to_string();
        assert!(e.contains("1 to 22"), "{e}");
    }
}
