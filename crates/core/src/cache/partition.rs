//! What names a partition of the cache: its table and key (model, organism, layer), their directory names
//! (`model=M/organism=O/layer=L`), and the checks that keep them readable by every engine.

use std::fmt;

use anyhow::{bail, Context, Result};

/// The organism name under which a model's own (base) activations are stored.
pub const BASE_ORGANISM: &str = "base";

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

pub(super) fn key_from_values(table: Table, values: &[(String, String)]) -> Result<PartitionKey> {
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
