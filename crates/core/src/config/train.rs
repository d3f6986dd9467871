//! The `[train]` section of a dictionary method's config: what dictionary to train on which cached rows,
//! with which hyperparameters. Pure data; `src/train/` does the work.

use serde::{Deserialize, Serialize};

use super::layers::LayerSpec;

/// Which dictionary a method trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DictionaryKind {
    /// A crosscoder over (base, ft) at one layer.
    Crosscoder,
    /// A sparse autoencoder on ft − base.
    SaeDifference,
    /// PCA of ft − base.
    Pca,
}

impl DictionaryKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Crosscoder => "crosscoder",
            Self::SaeDifference => "sae_difference",
            Self::Pca => "pca",
        }
    }
}

/// How the sparse dictionaries enforce sparsity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SparsityKind {
    BatchTopk,
    L1,
}

/// Training settings; every key has a default, so a method config names only what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub kind: DictionaryKind,
    /// Name of the dictionary in the cache; empty: `<kind>_L<layer>`.
    #[serde(default)]
    pub name: String,
    /// A cached layer: index or fraction of the depth (0.5: the middle layer).
    #[serde(default = "middle")]
    pub layer: LayerSpec,
    /// Datasets whose tokens train it; empty: every dataset cached for the organism.
    #[serde(default)]
    pub datasets: Vec<String>,
    /// Latents per input dimension (d_model).
    #[serde(default = "expansion")]
    pub expansion: usize,
    #[serde(default = "sparsity")]
    pub sparsity: SparsityKind,
    /// Active latents per token (BatchTopK).
    #[serde(default = "k")]
    pub k: usize,
    /// k at the start, annealed linearly to `k` over `k_anneal_steps` (0 or = k: no annealing).
    #[serde(default)]
    pub k_max: usize,
    #[serde(default)]
    pub k_anneal_steps: usize,
    /// L1 coefficient (L1 sparsity), warmed up linearly over the first 5% of steps.
    #[serde(default = "l1")]
    pub l1: f64,
    /// Weight of the auxiliary-k loss for dead latents.
    #[serde(default = "auxk_alpha")]
    pub auxk_alpha: f64,
    /// Latents the auxiliary loss uses per token; 0: d_model / 2.
    #[serde(default)]
    pub k_aux: usize,
    /// A latent that has not fired for this many training tokens is dead.
    #[serde(default = "dead_tokens")]
    pub dead_tokens: u64,
    #[serde(default = "batch_size")]
    pub batch_size: usize,
    #[serde(default = "lr")]
    pub lr: f64,
    /// Linear learning-rate warmup (steps); the BatchTopK threshold is learned after it.
    #[serde(default = "warmup_steps")]
    pub warmup_steps: usize,
    #[serde(default = "epochs")]
    pub epochs: usize,
    /// Training tokens used at most (per epoch).
    #[serde(default = "max_tokens")]
    pub max_tokens: usize,
    /// Fraction of sequences held out for validation.
    #[serde(default = "validation_fraction")]
    pub validation_fraction: f64,
    /// Validation tokens evaluated at most.
    #[serde(default = "max_validation_tokens")]
    pub max_validation_tokens: usize,
    #[serde(default)]
    pub seed: u64,
    /// Steps between checkpoints (a killed run resumes from the last one).
    #[serde(default = "checkpoint_every")]
    pub checkpoint_every: usize,
    /// Rows held in the shuffle buffer.
    #[serde(default = "shuffle_buffer_rows")]
    pub shuffle_buffer_rows: usize,
    /// Principal components kept (PCA); 0: all.
    #[serde(default = "components")]
    pub components: usize,
    /// Factor of the exponential average that learns the BatchTopK threshold.
    #[serde(default = "threshold_beta")]
    pub threshold_beta: f64,
}

fn middle() -> LayerSpec {
    LayerSpec::Fraction(0.5)
}
fn expansion() -> usize {
    32
}
fn sparsity() -> SparsityKind {
    SparsityKind::BatchTopk
}
fn k() -> usize {
    100
}
fn l1() -> f64 {
    0.04
}
fn auxk_alpha() -> f64 {
    1.0 / 32.0
}
fn dead_tokens() -> u64 {
    10_000_000
}
fn batch_size() -> usize {
    2048
}
fn lr() -> f64 {
    1e-4
}
fn warmup_steps() -> usize {
    1000
}
fn epochs() -> usize {
    2
}
fn max_tokens() -> usize {
    150_000_000
}
fn validation_fraction() -> f64 {
    0.05
}
fn max_validation_tokens() -> usize {
    5_000_000
}
fn checkpoint_every() -> usize {
    500
}
fn shuffle_buffer_rows() -> usize {
    65_536
}
fn components() -> usize {
    0
}
fn threshold_beta() -> f64 {
    0.999
}

impl TrainConfig {
    /// Checks the settings that need no data; errors name the key and its allowed range.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("expansion", self.expansion),
            ("k", self.k),
            ("batch_size", self.batch_size),
            ("epochs", self.epochs),
            ("max_tokens", self.max_tokens),
            ("checkpoint_every", self.checkpoint_every),
            ("shuffle_buffer_rows", self.shuffle_buffer_rows),
        ];
        for (key, v) in positive {
            if v == 0 {
                anyhow::bail!("diffing.method.train.{key} must be at least 1");
            }
        }
        if self.k_max != 0 && self.k_max < self.k {
            anyhow::bail!(
                "diffing.method.train.k_max ({}) is below k ({}): give k_max >= k, or 0 for no annealing",
                self.k_max,
                self.k
            );
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            anyhow::bail!("diffing.method.train.validation_fraction must be in [0, 1)");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            anyhow::bail!("diffing.method.train.lr must be a positive number");
        }
        if !(0.0..1.0).contains(&self.threshold_beta) {
            anyhow::bail!("diffing.method.train.threshold_beta must be in [0, 1)");
        }
        if !self.name.is_empty()
            && !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            anyhow::bail!(
                "diffing.method.train.name {:?} may hold only letters, digits, '_', '-' and '.'",
                self.name
            );
        }
        Ok(())
    }
}
