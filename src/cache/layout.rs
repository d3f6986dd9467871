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

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::manifest::Manifest;

/// The organism name under which a model's own (base) activations are stored.
pub const BASE_ORGANISM: &str = "base";

/// Name of the manifest file in each partition directory.
pub const MANIFEST_FILE: &str = "_manifest.json";

/// The tables a cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Activations,
    Tokens,
    Sequences,
    /// The final normed hidden state per token (float32): base logits can be recomputed from it exactly,
    /// so an organism run reuses the cached base model instead of running it again.
    FinalHidden,
    /// Every token id with its text, so top-k ids can be shown as text.
    Vocab,
    /// Per token of an organism, the vocabulary tokens whose logit the finetune raised most (ft − base
    /// logits): what `diff_mining` counts and factorises.
    LogitDiff,
    /// Per dataset and vocabulary token of an organism, totals of the logit difference over every cached
    /// token: positions, sum, how often positive, how often in the top-k and the bottom-k.
    LogitDiffTotals,
}

impl Table {
    /// Every table, in display order.
    pub const ALL: [Table; 7] = [
        Table::Activations,
        Table::Tokens,
        Table::Sequences,
        Table::FinalHidden,
        Table::Vocab,
        Table::LogitDiff,
        Table::LogitDiffTotals,
    ];

    /// Directory name and SQL table name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Activations => "activations",
            Table::Tokens => "tokens",
            Table::Sequences => "sequences",
            Table::FinalHidden => "final_hidden",
            Table::Vocab => "vocab",
            Table::LogitDiff => "logit_diff",
            Table::LogitDiffTotals => "logit_diff_totals",
        }
    }

    /// Partition columns, outermost first.
    pub fn partition_columns(self) -> &'static [&'static str] {
        match self {
            Table::Activations => &["model", "organism", "layer"],
            Table::Tokens | Table::FinalHidden | Table::LogitDiff | Table::LogitDiffTotals => &["model", "organism"],
            Table::Sequences | Table::Vocab => &["model"],
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One partition of one table: its partition values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct PartitionKey {
    pub table: Table,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organism: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<i32>,
}

impl serde::Serialize for Table {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Table {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Table::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown table {s:?}")))
    }
}

impl PartitionKey {
    /// A partition of `activations`.
    pub fn activations(model: &str, organism: &str, layer: i32) -> Self {
        Self {
            table: Table::Activations,
            model: model.into(),
            organism: Some(organism.into()),
            layer: Some(layer),
        }
    }

    /// A partition of `tokens`.
    pub fn tokens(model: &str, organism: &str) -> Self {
        Self {
            table: Table::Tokens,
            model: model.into(),
            organism: Some(organism.into()),
            layer: None,
        }
    }

    /// A partition of `final_hidden`.
    pub fn final_hidden(model: &str, organism: &str) -> Self {
        Self {
            table: Table::FinalHidden,
            ..Self::tokens(model, organism)
        }
    }

    /// A partition of `logit_diff`.
    pub fn logit_diff(model: &str, organism: &str) -> Self {
        Self {
            table: Table::LogitDiff,
            ..Self::tokens(model, organism)
        }
    }

    /// A partition of `logit_diff_totals`.
    pub fn logit_diff_totals(model: &str, organism: &str) -> Self {
        Self {
            table: Table::LogitDiffTotals,
            ..Self::tokens(model, organism)
        }
    }

    /// A partition of `sequences`.
    pub fn sequences(model: &str) -> Self {
        Self {
            table: Table::Sequences,
            model: model.into(),
            organism: None,
            layer: None,
        }
    }

    /// A partition of `vocab`.
    pub fn vocab(model: &str) -> Self {
        Self {
            table: Table::Vocab,
            ..Self::sequences(model)
        }
    }

    /// The same partition of the base model (for an activations or tokens partition).
    pub fn base(&self) -> Self {
        Self {
            organism: self.organism.as_ref().map(|_| BASE_ORGANISM.to_string()),
            ..self.clone()
        }
    }

    /// Whether this is a partition of the base model itself.
    pub fn is_base(&self) -> bool {
        self.organism.as_deref() == Some(BASE_ORGANISM)
    }

    /// Path components `k=v` below the table directory.
    pub fn components(&self) -> Vec<String> {
        let mut parts = vec![format!("model={}", self.model)];
        if let Some(o) = &self.organism {
            parts.push(format!("organism={o}"));
        }
        if let Some(l) = self.layer {
            parts.push(format!("layer={l}"));
        }
        parts
    }

    /// Checks that names are safe as Hive partition values in every reader (letters, digits, `_`, `-`, `.`).
    pub fn validate(&self) -> Result<()> {
        for (what, value) in [("model", Some(&self.model)), ("organism", self.organism.as_ref())] {
            let Some(v) = value else { continue };
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) || v.starts_with('.')
            {
                bail!("{what} name {v:?} cannot be a cache partition: use letters, digits, '_', '-' and '.' only");
            }
        }
        Ok(())
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.table, self.components().join("/"))
    }
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

fn key_from_values(table: Table, values: &[(String, String)]) -> Result<PartitionKey> {
    let get = |k: &str| values.iter().find(|(c, _)| c == k).map(|(_, v)| v.clone());
    let layer = match get("layer") {
        Some(l) => Some(
            l.parse::<i32>()
                .with_context(|| format!("bad layer directory name layer={l}"))?,
        ),
        None => None,
    };
    Ok(PartitionKey {
        table,
        model: get("model").unwrap_or_default(),
        organism: get("organism"),
        layer,
    })
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
