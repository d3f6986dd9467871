//! What a training run is asked for and reports: the request, its outcome, the parts of the manifest every
//! kind of dictionary records, and the progress bar both trainers draw.

use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};

use super::store::{self, DictionaryId, DictionaryManifest, Validation};
use diffsql_core::config::{DictionaryKind, TrainConfig};

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub model: String,
    pub organism: String,
    /// A resolved layer index.
    pub layer: i32,
    pub config: TrainConfig,
    pub device: Device,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Stop (after a checkpoint) once this many steps are done: how tests stand in for a killed run.
    pub stop_after_steps: Option<u64>,
}

/// How a request ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Trained(DictionaryManifest),
    /// A complete dictionary with these settings was already in the cache: nothing was done.
    Existing(DictionaryManifest),
    /// Stopped at `stop_after_steps`, with a checkpoint.
    Stopped {
        step: u64,
    },
}

impl Outcome {
    pub fn manifest(&self) -> Option<&DictionaryManifest> {
        match self {
            Outcome::Trained(m) | Outcome::Existing(m) => Some(m),
            Outcome::Stopped { .. } => None,
        }
    }
}

/// What every manifest records besides the results.
pub(crate) struct ManifestBase {
    pub(crate) id: DictionaryId,
    pub(crate) layer: i32,
    pub(crate) config: TrainConfig,
    pub(crate) source_fingerprint: String,
    pub(crate) datasets: Vec<String>,
    pub(crate) d_model: usize,
}

impl ManifestBase {
    pub(crate) fn manifest(&self, latents: usize, scale: Vec<f32>, bias: Vec<f32>) -> DictionaryManifest {
        DictionaryManifest {
            format: store::DICTIONARY_FORMAT,
            id: self.id.clone(),
            kind: self.config.kind,
            layer: self.layer,
            datasets: self.datasets.clone(),
            d_model: self.d_model,
            latents,
            settings: self.config.clone(),
            scale,
            bias,
            threshold: None,
            train_tokens: 0,
            steps: 0,
            seconds: 0.0,
            curve: Vec::new(),
            validation: Validation::default(),
            source_fingerprint: self.source_fingerprint.clone(),
            latents_bytes: 0,
            latents_xxh3: String::new(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

pub(crate) fn too_few(base: &ManifestBase, rows: usize, need: usize, what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "dictionary {}: layer {} has {rows} training tokens, {what} needs at least {need}: preprocess more tokens (preprocessing.max_tokens, more datasets) or {}",
        base.id,
        base.layer,
        if base.config.kind == DictionaryKind::Pca { "use more data" } else { "lower diffing.method.train.batch_size" }
    )
}

pub(crate) fn progress_bar(len: u64, unit: &str) -> ProgressBar {
    let bar = diffsql_core::progress::bar(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {unit} {{msg}} [{{elapsed_precise}} < {{eta_precise}}]"
        ))
        .expect("a valid template"),
    );
    bar
}
