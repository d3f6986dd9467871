//! What a preprocessing run still has to write: the partitions of this run's model, organism and layers
//! that are not complete yet, and the token fingerprint every one of them must carry.

use anyhow::{bail, Result};
use diffsql_udfs::vector::ElementType;

use diffsql_core::cache::layout::BASE_ORGANISM;
use diffsql_core::cache::writer::TokenFingerprint;
use diffsql_core::cache::{CacheLayout, PartitionKey};
use diffsql_model::data::tokenize::TokenizedDataset;

/// The fingerprint every token-keyed partition of this run must have.
pub fn fingerprint(datasets: &[TokenizedDataset]) -> String {
    let mut fp = TokenFingerprint::default();
    for d in datasets {
        for s in &d.sequences {
            for (p, &t) in s.ids.iter().enumerate() {
                fp.push(&d.name, &d.split, s.seq_id, p as i32, t as i32);
            }
        }
    }
    fp.hex()
}

/// Which side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Base,
    Organism,
}

/// The partitions of this run that still have to be written.
pub struct Plan {
    pub activations: Vec<(Side, usize, PartitionKey)>,
    /// The base model's final hidden state (the only one read back, by later organism runs).
    pub final_hidden: Option<PartitionKey>,
    pub tokens: Vec<(Side, PartitionKey)>,
    /// The organism's `logit_diff` and `logit_diff_totals` (when `preprocessing.diff_top_k` > 0).
    pub logit_diff: Option<(PartitionKey, PartitionKey)>,
    pub sequences: Option<PartitionKey>,
    pub vocab: Option<PartitionKey>,
}

impl Plan {
    /// The partitions of `model`/`organism` at `layers` (and the model's shared tables) not complete yet.
    pub fn build(
        layout: &CacheLayout,
        model: &str,
        organism: &str,
        layers: &[i32],
        storage: ElementType,
        fp: &str,
        diff_top_k: usize,
    ) -> Result<Self> {
        let mut plan = Plan {
            activations: Vec::new(),
            final_hidden: None,
            tokens: Vec::new(),
            logit_diff: None,
            sequences: None,
            vocab: None,
        };
        for (side, name) in [(Side::Base, BASE_ORGANISM), (Side::Organism, organism)] {
            for (i, &layer) in layers.iter().enumerate() {
                let key = PartitionKey::activations(model, name, layer);
                if !complete(layout, &key, fp, Some(storage))? {
                    plan.activations.push((side, i, key));
                }
            }
            let key = PartitionKey::tokens(model, name);
            if !complete(layout, &key, fp, None)? {
                plan.tokens.push((side, key));
            }
        }
        if diff_top_k > 0 {
            let keys = (
                PartitionKey::logit_diff(model, organism),
                PartitionKey::logit_diff_totals(model, organism),
            );
            let mut done = true;
            for key in [&keys.0, &keys.1] {
                done &= complete(layout, key, fp, None)? && same_diff_top_k(layout, key, diff_top_k)?;
            }
            if !done {
                plan.logit_diff = Some(keys);
            }
        }
        let key = PartitionKey::final_hidden(model, BASE_ORGANISM);
        if !complete(layout, &key, fp, None)? {
            plan.final_hidden = Some(key);
        }
        let key = PartitionKey::sequences(model);
        if !present(layout, &key)? {
            plan.sequences = Some(key);
        }
        let key = PartitionKey::vocab(model);
        if !present(layout, &key)? {
            plan.vocab = Some(key);
        }
        Ok(plan)
    }

    /// Whether nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many partitions are left to write.
    pub fn len(&self) -> usize {
        self.activations.len()
            + usize::from(self.final_hidden.is_some())
            + self.tokens.len()
            + 2 * usize::from(self.logit_diff.is_some())
            + usize::from(self.sequences.is_some())
            + usize::from(self.vocab.is_some())
    }
    pub fn runs(&self, side: Side) -> bool {
        self.activations.iter().any(|(s, ..)| *s == side)
            || (side == Side::Base && self.final_hidden.is_some())
            || self.tokens.iter().any(|(s, _)| *s == side)
            || (side == Side::Organism && self.logit_diff.is_some())
    }
}

/// Whether a complete logit-difference partition kept `diff_top_k` tokens per token; another k is an error
/// that says how to get the one asked for.
fn same_diff_top_k(layout: &CacheLayout, key: &PartitionKey, diff_top_k: usize) -> Result<bool> {
    let Some(m) = layout.manifest(key)? else {
        return Ok(false);
    };
    let have = m.settings["preprocessing"]["diff_top_k"].as_u64();
    if have != Some(diff_top_k as u64) {
        bail!(
            "{key} was written with preprocessing.diff_top_k={} but this run asks for {diff_top_k}: set preprocessing.diff_top_k={0}, or remove {} to write it again",
            have.map_or("?".to_string(), |k| k.to_string()),
            layout.partition_dir(key).display()
        );
    }
    Ok(true)
}

/// Whether a partition keyed by model only (sequences, vocab) is complete and undamaged.
fn present(layout: &CacheLayout, key: &PartitionKey) -> Result<bool> {
    match layout.manifest(key)? {
        Some(m) => diffsql_core::cache::verify::verify_partition(layout, key, &m).map(|()| true),
        None => Ok(false),
    }
}

/// Whether `key` is complete; a complete partition with other tokens or another dtype is an error.
fn complete(layout: &CacheLayout, key: &PartitionKey, fingerprint: &str, dtype: Option<ElementType>) -> Result<bool> {
    let Some(m) = layout.manifest(key)? else {
        return Ok(false);
    };
    let dir = layout.partition_dir(key);
    if m.token_fingerprint.as_deref().is_some_and(|f| f != fingerprint) {
        bail!(
            "{key} in {} holds other tokens than this run (the datasets or preprocessing limits changed): remove {} or set cache_dir to another directory",
            layout.root().display(),
            dir.display()
        );
    }
    // A damaged partition is not complete data: say so rather than "nothing to do" (its sizes and checksums
    // are read at memory speed, far below the cost of the models that would otherwise run).
    diffsql_core::cache::verify::verify_partition(layout, key, &m)?;
    if let (Some(want), Some(have)) = (dtype, m.dtype.as_deref()) {
        if want.name() != have {
            bail!(
                "{key} is stored as {have} but preprocessing.dtype is {}: remove {} or set preprocessing.dtype={have}",
                want.name(),
                dir.display()
            );
        }
    }
    Ok(true)
}
