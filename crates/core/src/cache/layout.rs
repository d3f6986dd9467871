//! Where each table and partition of a cache lives, and the Arrow schemas of the files.
//!
//! ```text
//! <root>/activations/model=M/organism=O/layer=L/part-00000.parquet, _manifest.json
//! <root>/tokens/model=M/organism=O/part-00000.parquet, _manifest.json
//! <root>/sequences/model=M/part-00000.parquet, _manifest.json
//! <root>/final_hidden/model=M/organism=O/...   the last normed hidden state (input of the unembedding)
//! <root>/vocab/model=M/...                       every token id of the tokenizer with its text
//! <root>/logit_diff/model=M/organism=O/...       per token, the k largest ft − base logit differences
//! <root>/logit_diff_totals/model=M/organism=O/... per dataset and vocabulary token, sums over every token
//! <root>/.staging/...   partitions being written; renamed into place when complete
//! ```
//! The base model's own activations are the partition `organism=base`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::manifest::Manifest;
use super::partition::key_from_values;
pub use super::partition::{PartitionKey, Table, BASE_ORGANISM};

/// Name of the manifest file in each partition directory.
pub const MANIFEST_FILE: &str = "_manifest.json";

/// A partition's name under `.staging/`: its key with `/` as `,` (one flat directory).
fn staging_name(key: &PartitionKey) -> String {
    key.to_string().replace('/', ",")
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct CacheLayout {
    root: PathBuf,
}

impl CacheLayout {
    /// The cache at `root` (which need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a table.
    pub fn table_dir(&self, table: Table) -> PathBuf {
        self.root.join(table.name())
    }

    /// The directory of a partition.
    pub fn partition_dir(&self, key: &PartitionKey) -> PathBuf {
        let mut p = self.table_dir(key.table);
        for c in key.components() {
            p.push(c);
        }
        p
    }

    /// Where partitions are written before they are renamed into place.
    pub fn staging_dir(&self) -> PathBuf {
        self.root.join(".staging")
    }

    /// Where a partition is written before it is renamed into place.
    pub fn partition_staging_dir(&self, key: &PartitionKey) -> PathBuf {
        self.staging_dir().join(staging_name(key))
    }

    /// The lock file of a partition's writer ([`WriteLock`](super::lock::WriteLock)).
    pub fn partition_lock_path(&self, key: &PartitionKey) -> PathBuf {
        self.staging_dir().join(format!("{}.lock", staging_name(key)))
    }

    /// Creates the cache and its staging directory if needed and checks that files can be written there,
    /// so a read-only or full cache stops a run before any model is loaded.
    pub fn ensure_writable(&self) -> Result<()> {
        let staging = self.staging_dir();
        std::fs::create_dir_all(&staging).with_context(|| {
            format!(
                "cannot create the cache directory {}: check the path and its permissions, or set cache_dir",
                staging.display()
            )
        })?;
        let probe = staging.join(format!(".write-probe-{}", std::process::id()));
        std::fs::write(&probe, b"probe").with_context(|| {
            format!(
                "the cache {} is not writable: check its permissions and free space, or set cache_dir",
                self.root.display()
            )
        })?;
        std::fs::remove_file(&probe).ok();
        Ok(())
    }

    /// The manifest of a partition, if the partition is complete.
    pub fn manifest(&self, key: &PartitionKey) -> Result<Option<Manifest>> {
        let path = self.partition_dir(key).join(MANIFEST_FILE);
        if !path.exists() {
            return Ok(None);
        }
        Manifest::read(&path).map(Some)
    }

    /// Every complete partition of `table` (those with a manifest), sorted.
    /// The depth of `model` as preprocessing recorded it in the manifests of its activations.
    pub fn recorded_depth(&self, model: &str) -> Result<usize> {
        self.partitions(Table::Activations)?
            .iter()
            .filter(|(k, _)| k.model == model)
            .find_map(|(_, m)| m.settings.get("num_layers").and_then(|n| n.as_u64()))
            .map(|n| n as usize)
            .with_context(|| {
                format!(
                    "no activations of model {model} with a recorded depth in {}: run diffsql preprocess first",
                    self.root.display()
                )
            })
    }

    pub fn partitions(&self, table: Table) -> Result<Vec<(PartitionKey, Manifest)>> {
        let mut out = Vec::new();
        let dir = self.table_dir(table);
        if dir.is_dir() {
            collect_partitions(&dir, table, &mut Vec::new(), &mut out)?;
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn collect_partitions(
    dir: &Path,
    table: Table,
    values: &mut Vec<(String, String)>,
    out: &mut Vec<(PartitionKey, Manifest)>,
) -> Result<()> {
    let depth = table.partition_columns().len();
    if values.len() == depth {
        let manifest_path = dir.join(MANIFEST_FILE);
        if manifest_path.exists() {
            let manifest = Manifest::read(&manifest_path)?;
            out.push((key_from_values(table, values)?, manifest));
        }
        return Ok(());
    }
    let column = table.partition_columns()[values.len()];
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(value) = name.strip_prefix(column).and_then(|r| r.strip_prefix('=')) else {
            continue;
        };
        if !entry.file_type()?.is_dir() {
            continue;
        }
        values.push((column.to_string(), value.to_string()));
        collect_partitions(&entry.path(), table, values, out)?;
        values.pop();
    }
    Ok(())
}

/// Columns that identify a token, shared by `activations` and `tokens` files.
pub fn token_key_fields() -> Vec<Field> {
    vec![
        Field::new("dataset", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("seq_id", DataType::Int64, false),
        Field::new("pos", DataType::Int32, false),
        Field::new("token_id", DataType::Int32, false),
    ]
}

/// Schema of a `tokens` file (without the partition columns).
pub fn tokens_file_schema() -> SchemaRef {
    let mut fields = token_key_fields();
    let item = |t: DataType| Arc::new(Field::new_list_field(t, true));
    fields.extend([
        Field::new("token", DataType::Utf8, true),
        Field::new("logprob", DataType::Float32, true),
        Field::new("topk_ids", DataType::List(item(DataType::Int32)), true),
        Field::new("topk_logprobs", DataType::List(item(DataType::Float32)), true),
        Field::new("kl", DataType::Float32, true),
    ]);
    Arc::new(Schema::new(fields))
}

/// Schema of a `sequences` file (without the partition columns).
pub fn sequences_file_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("dataset", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("seq_id", DataType::Int64, false),
        Field::new("text", DataType::Utf8, true),
        Field::new("n_tokens", DataType::Int32, false),
    ]))
}

/// Schema of a `logit_diff` file (without the partition columns): the token's keys, then the ids and values
/// of the largest ft − base logit differences at that token, largest first.
pub fn logit_diff_file_schema() -> SchemaRef {
    let mut fields = token_key_fields();
    let item = |t: DataType| Arc::new(Field::new_list_field(t, true));
    fields.extend([
        Field::new("top_ids", DataType::List(item(DataType::Int32)), false),
        Field::new("top_values", DataType::List(item(DataType::Float32)), false),
    ]);
    Arc::new(Schema::new(fields))
}

/// Schema of a `logit_diff_totals` file (without the partition columns): per dataset, split and vocabulary
/// token, over every cached token of the dataset.
pub fn logit_diff_totals_file_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("dataset", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("token_id", DataType::Int32, false),
        // Tokens of the dataset (the same in every row of it).
        Field::new("positions", DataType::Int64, false),
        // Σ (ft − base logit) of this vocabulary token over the positions.
        Field::new("sum_diff", DataType::Float64, false),
        // Positions where its difference is > 0.
        Field::new("positive_count", DataType::Int64, false),
        // Positions where it is among the k largest differences / the k smallest.
        Field::new("top_count", DataType::Int64, false),
        Field::new("bottom_count", DataType::Int64, false),
    ]))
}

/// Schema of a `vocab` file (without the partition column).
pub fn vocab_file_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("token_id", DataType::Int32, false),
        Field::new("token", DataType::Utf8, true),
    ]))
}

/// Partition columns as typed table columns.
pub fn partition_fields(table: Table) -> Vec<Field> {
    table
        .partition_columns()
        .iter()
        .map(|c| match *c {
            "layer" => Field::new("layer", DataType::Int32, false),
            other => Field::new(other, DataType::Utf8, false),
        })
        .collect()
}
