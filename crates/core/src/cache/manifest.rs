//! The manifest of a partition: what it holds and how it was made, written last so its presence marks
//! the partition complete.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::partition::PartitionKey;

/// Version of the cache format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// One data file of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the partition directory.
    pub name: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// xxh3-64 of the file's bytes, hex.
    pub xxh3: String,
}

/// Everything known about a complete partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub partition: PartitionKey,
    /// Total rows over all files.
    pub rows: u64,
    /// xxh3-128 over (dataset, split, seq_id, pos, token_id) of every row in order, hex; equal
    /// fingerprints mean two partitions hold the same tokens in the same order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_fingerprint: Option<String>,
    /// Storage encoding of the vector column (`float32`, `float16`, `bfloat16`), activations only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// Vector length, activations only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d_model: Option<usize>,
    pub files: Vec<FileEntry>,
    /// Settings of the run that wrote it (free-form).
    #[serde(default)]
    pub settings: serde_json::Value,
    /// Seconds since the Unix epoch when it was completed.
    pub created_unix: u64,
}

impl Manifest {
    /// Reads and checks a manifest file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).with_context(|| format!("cannot read manifest {}", path.display()))?;
        Self::parse(&text, &path.display())
    }

    /// Parses and checks the bytes of the manifest at `location` (named in errors).
    pub fn parse(text: &[u8], location: &dyn std::fmt::Display) -> Result<Self> {
        let m: Manifest = serde_json::from_slice(text)
            .with_context(|| format!("manifest {location} is corrupt; delete its partition and rerun to rewrite it"))?;
        if m.format != FORMAT_VERSION {
            anyhow::bail!(
                "manifest {location} has cache format {}, this diffsql reads format {FORMAT_VERSION}; rebuild the cache",
                m.format
            );
        }
        Ok(m)
    }

    /// Total bytes of the data files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// Writes the manifest to `path` through a temporary file and a rename.
    pub fn write(&self, path: &Path) -> Result<()> {
        super::atomic::write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }
}
