//! The typed settings a run uses, deserialised once from the merged config tree (unknown keys are errors).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::compression::VectorCompression;
use super::device::ComputeDevice;
pub use super::layers::{resolve_layers, LayerSpec};
pub use diffsql_udfs::vector::ElementType;

/// Everything a run needs, resolved from `configs/` and the overrides.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The group choices this run was resolved with.
    pub defaults: Defaults,
    pub model: ModelConfig,
    pub organism: OrganismConfig,
    /// The chosen datasets, by name, in `defaults.dataset` order.
    pub dataset: BTreeMap<String, DatasetConfig>,
    pub diffing: Diffing,
    pub pipeline: Pipeline,
    pub preprocessing: Preprocessing,
    /// The agentic evaluation (`pipeline.mode=evaluation`).
    #[serde(default)]
    pub evaluation: super::evaluation::EvaluationConfig,
    /// Where the cache lives (relative paths are relative to the working directory).
    pub cache_dir: PathBuf,
    /// Where diffing results are written.
    pub results_dir: PathBuf,
    /// `diffsql worker`s (host:port) that run the heavy stages of this run's queries; empty: this process.
    #[serde(default)]
    pub workers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub model: String,
    pub organism: String,
    pub dataset: Vec<String>,
    #[serde(rename = "diffing/method")]
    pub diffing_method: String,
}

/// A base model: `configs/model/NAME.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A local directory, a `.gguf` file, or a Hugging Face repo id.
    pub source: String,
    /// Hub revision (branch, tag or commit).
    #[serde(default = "main_revision")]
    pub revision: String,
    /// Compute dtype: float32, bfloat16 or float16.
    #[serde(default = "float32")]
    pub dtype: ElementType,
    /// The token that ends a chat turn (`<end_of_turn>`, `<|im_end|>`), when the model has a chat format.
    #[serde(default)]
    pub end_of_turn_token: Option<String>,
    /// Leading tokens of every sample that statistics and dictionary training skip (the toolkit's
    /// `ignore_first_n_tokens_per_sample_during_training`: attention-sink tokens with outsized norms).
    /// Queries see it as `$ignore_first_tokens`.
    #[serde(default)]
    pub ignore_first_tokens: usize,
    /// Whether the chat template takes `enable_thinking` (Qwen3), as the toolkit records it. Generation
    /// prompts are always rendered with `enable_thinking` false, which only such templates read.
    #[serde(default)]
    pub has_enable_thinking: bool,
}

/// A finetuned model organism: `configs/organism/NAME.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganismConfig {
    pub name: String,
    /// What the finetune taught, in a line.
    pub description: String,
    /// How it was made (e.g. SDF: synthetic document finetuning; style).
    #[serde(default, rename = "type")]
    pub kind: String,
    /// What the finetune taught, in full: the ground truth an agent's hypothesis is graded against.
    #[serde(default)]
    pub description_long: String,
    /// The dataset config holding its training data, if one exists.
    #[serde(default)]
    pub training_dataset: Option<String>,
    /// The training data as the reference toolkit names it (a hub dataset), when it does.
    #[serde(default)]
    pub training_data: Option<TrainingData>,
    /// Facts about the organism (paper, source), as given.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The system prompt an agent interrogating this organism is given, when it needs one.
    #[serde(default)]
    pub agent_interaction_system_prompt: Option<String>,
    /// Which checkpoint of the chosen base model to use (`organism.variant=mix1-0p5`).
    #[serde(default = "default_variant")]
    pub variant: String,
    /// The finetuned checkpoints for each base model it exists for, by model config name, then by variant.
    #[serde(default)]
    pub finetuned: BTreeMap<String, Variants>,
}

/// An organism's training data as the reference toolkit records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingData {
    /// A hub dataset id (or a path where the toolkit's authors kept it).
    pub id: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub splits: Vec<String>,
    #[serde(default)]
    pub is_chat: bool,
    #[serde(default)]
    pub text_column: Option<String>,
}

/// The checkpoints of one organism for one base model, by variant name (`default`, `full`, `mix1-0p5`, …).
/// Written either as variant tables (`[finetuned.BASE.VARIANT]`) or, for one checkpoint, directly
/// (`[finetuned.BASE]` with `source` or `adapter`: the variant `default`).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Variants(pub BTreeMap<String, Finetuned>);

impl<'de> Deserialize<'de> for Variants {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let table = toml::Table::deserialize(d)?;
        let one_checkpoint = table.keys().any(|k| Finetuned::KEYS.contains(&k.as_str()));
        let parse = |v: toml::Value| Finetuned::deserialize(v).map_err(|e| D::Error::custom(e.message().trim()));
        if one_checkpoint {
            return Ok(Self(BTreeMap::from([(
                DEFAULT_VARIANT.to_string(),
                parse(toml::Value::Table(table))?,
            )])));
        }
        let mut variants = BTreeMap::new();
        for (name, value) in table {
            if !value.is_table() {
                return Err(D::Error::custom(format!(
                    "`{name}` is neither a checkpoint key ({}) nor a variant table",
                    Finetuned::KEYS.join(", ")
                )));
            }
            let checkpoint = parse(value).map_err(|e| D::Error::custom(format!("variant {name}: {e}")))?;
            variants.insert(name, checkpoint);
        }
        Ok(Self(variants))
    }
}

/// The variant used when none is chosen.
pub const DEFAULT_VARIANT: &str = "default";

/// Where one organism's weights come from for one base model: a full model or a PEFT LoRA adapter.
/// Either may be a hub id with a subfolder (`org/repo/sub/folder`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finetuned {
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub adapter: Option<String>,
    #[serde(default = "main_revision")]
    pub revision: String,
}

/// How a dataset's files are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// By each file's extension (`.jsonl`/`.json`, `.txt`, `.parquet`).
    #[default]
    Auto,
    #[serde(alias = "json")]
    Jsonl,
    #[serde(alias = "txt")]
    Text,
    Parquet,
}

/// A dataset: `configs/dataset/NAME.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A local file (`.jsonl`, `.txt`, `.parquet`) or a Hugging Face dataset repo id.
    pub source: String,
    /// jsonl, text or parquet; `auto` decides by each file's extension.
    #[serde(default)]
    pub format: DatasetFormat,
    /// The split name recorded in the cache (and, for hub datasets, the files to read).
    #[serde(default = "train")]
    pub split: String,
    #[serde(default = "text_field")]
    pub text_field: String,
    /// Field of chat conversations (a list of {role, content}); rendered with the model's chat template.
    #[serde(default = "messages_field")]
    pub messages_field: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Diffing {
    pub method: MethodConfig,
}

/// A diffing method: `configs/diffing/method/NAME.toml`, running the queries in `queries/NAME/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Parameters substituted into the queries as `$name`.
    #[serde(default)]
    pub params: BTreeMap<String, toml::Value>,
    /// Charts drawn from the result tables.
    #[serde(default)]
    pub plots: Vec<super::plots::PlotSpec>,
    /// A dictionary trained (or found in the cache) before the queries run; they see it as `$dictionary`.
    #[serde(default)]
    pub train: Option<super::train::TrainConfig>,
    /// Cache tables the queries read for this model and organism beyond `activations` and `tokens`
    /// (`logit_diff`, `logit_diff_totals`): checked before any query runs, with how to write them.
    #[serde(default)]
    pub requires: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Preprocessing,
    Diffing,
    /// Agents interrogate the pair on a method's existing results; graders score them.
    Evaluation,
    Full,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Preprocessing => "preprocessing",
            Mode::Diffing => "diffing",
            Mode::Evaluation => "evaluation",
            Mode::Full => "full",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub mode: Mode,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// Layers whose residual-stream output is cached.
    pub layers: Vec<LayerSpec>,
    /// Storage dtype of cached vectors: bfloat16, float16 or float32.
    pub dtype: ElementType,
    /// Tokens per sequence at most (longer samples are truncated).
    pub context_len: usize,
    pub batch_size: usize,
    /// Samples per dataset at most.
    pub max_samples: usize,
    /// Tokens per dataset at most.
    pub max_tokens: usize,
    /// Next-token candidates kept per token and model in `tokens`.
    pub top_k: usize,
    /// Vocabulary tokens kept per token in `logit_diff` (the largest ft − base logit differences, what
    /// `diff_mining` counts); 0 writes no `logit_diff` tables.
    #[serde(default)]
    pub diff_top_k: usize,
    /// Compression of the cached vectors: none, snappy, zstd or zstd(N).
    pub compression: VectorCompression,
    /// Where the models run: cpu, cuda or cuda:N (checked when the config is read).
    #[serde(default)]
    pub device: ComputeDevice,
}

impl Finetuned {
    /// The keys a checkpoint table has.
    pub const KEYS: [&'static str; 3] = ["source", "adapter", "revision"];
}

fn default_variant() -> String {
    DEFAULT_VARIANT.into()
}
fn main_revision() -> String {
    "main".into()
}
fn float32() -> ElementType {
    ElementType::Float32
}
fn train() -> String {
    "train".into()
}
fn text_field() -> String {
    "text".into()
}
fn messages_field() -> String {
    "messages".into()
}

impl Settings {
    /// The chosen datasets in order.
    pub fn datasets(&self) -> Vec<&DatasetConfig> {
        self.defaults.dataset.iter().map(|n| &self.dataset[n]).collect()
    }

    /// The organism's checkpoint for the chosen base model and variant.
    pub fn finetuned(&self) -> Result<&Finetuned> {
        let organism = &self.organism;
        let Some(variants) = organism.finetuned.get(&self.model.name) else {
            let known: Vec<_> = organism.finetuned.keys().cloned().collect();
            anyhow::bail!(
                "organism {} has no finetuned checkpoint for model {} (it has one for: {}): choose one of those with model=NAME, or add [finetuned.{}] to configs/organism/{}.toml",
                organism.name,
                self.model.name,
                if known.is_empty() { "none".into() } else { known.join(", ") },
                self.model.name,
                organism.name
            )
        };
        variants.0.get(&organism.variant).ok_or_else(|| {
            let known: Vec<_> = variants.0.keys().cloned().collect();
            anyhow::anyhow!(
                "organism {} has no variant `{}` for model {}: choose one of {} (organism.variant=NAME)",
                organism.name,
                organism.variant,
                self.model.name,
                known.join(", ")
            )
        })
    }
}

/// A source as written in a config, made relative to the project (the parent of `configs/`) when it names
/// a path that exists there; otherwise it is returned as written (a hub id or an absolute path).
pub fn locate(source: &str, project_root: &Path) -> String {
    let p = Path::new(source);
    if p.is_relative() {
        let candidate = project_root.join(p);
        if candidate.exists() {
            return candidate.to_string_lossy().into_owned();
        }
    }
    source.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dataset_format_is_one_of_the_readers_and_a_wrong_one_lists_them() {
        let parse = |format: &str| {
            toml::from_str::<DatasetConfig>(&format!("name = \"d\"\nsource = \"d.jsonl\"\nformat = \"{format}\""))
        };
        assert_eq!(parse("json").unwrap().format, DatasetFormat::Jsonl);
        assert_eq!(parse("parquet").unwrap().format, DatasetFormat::Parquet);
        let e = parse("csv").unwrap_err().to_string();
        assert!(e.contains("csv") && e.contains("jsonl") && e.contains("parquet"), "{e}");
        let auto = toml::from_str::<DatasetConfig>("name = \"d\"\nsource = \"d.jsonl\"").unwrap();
        assert_eq!(auto.format, DatasetFormat::Auto);
    }

    #[test]
    fn storage_dtype_and_compression_are_checked_when_read() {
        #[derive(Debug, Deserialize)]
        struct Both {
            #[allow(dead_code)]
            dtype: ElementType,
            #[allow(dead_code)]
            compression: VectorCompression,
        }
        assert!(toml::from_str::<Both>("dtype = \"bf16\"\ncompression = \"zstd(3)\"").is_ok());
        let e = toml::from_str::<Both>("dtype = \"int8\"\ncompression = \"none\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("int8") && e.contains("bfloat16"), "{e}");
        let e = toml::from_str::<Both>("dtype = \"f32\"\ncompression = \"lz4\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lz4") && e.contains("zstd(N)"), "{e}");
    }
}
