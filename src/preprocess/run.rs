//! One preprocessing run: tokenise the datasets once, run the base model and the organism over identical
//! batches, and write every cache partition that is not complete yet.
//!
//! The base model's partitions (`organism=base`) are shared by every organism: when they are complete and
//! hold the same tokens (same fingerprint) the base model is not run again; its logits for KL are recomputed
//! exactly from the cached `final_hidden`. Writing and the per-token statistics run on a second thread, so
//! they overlap the next batch's forward passes. Every partition is written atomically; an interrupted run
//! leaves only staging files, and a rerun writes what is missing (a finished run is a no-op).

use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use diffsql_udfs::vector::ElementType;
use indicatif::{ProgressBar, ProgressStyle};

use super::final_hidden::FinalHiddenReader;
use super::pair::PairFiles;
use super::plan::{fingerprint, Plan, Side};
use super::sink::{write_vocab, BatchOutput, Candidates, Sink};
use crate::cache::layout::BASE_ORGANISM;
use crate::cache::writer::parse_compression;
use crate::cache::{CacheLayout, PartitionKey, WriteOptions};
use crate::config::settings::{resolve_layers, Settings};
use crate::data::chat::ChatTemplate;
use crate::data::source;
use crate::data::tokenize::{tokenize, Limits, TokenizedDataset};
use crate::model::load::{LoadedModel, ModelFiles};

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Tokens in the datasets.
    pub tokens: usize,
    pub partitions_written: usize,
    pub rows_written: u64,
    pub bytes_written: u64,
    pub seconds: f64,
    /// Whether the base model's cached partitions were reused instead of running it.
    pub base_reused: bool,
    /// Where the time went, stage by stage.
    pub stages: Stages,
    /// Which BOS and chat template the tokens were made with ([`SpecialTokens::describe`]).
    ///
    /// [`SpecialTokens::describe`]: crate::model::special_tokens::SpecialTokens::describe
    pub tokenizer: String,
}

impl Summary {
    pub fn is_noop(&self) -> bool {
        self.partitions_written == 0
    }
}

/// Seconds spent in each stage of a run. The compute thread reads data, loads and runs the models; the writer
/// thread computes logits and next-token statistics and encodes and writes partitions, overlapping the next
/// batch's forward passes (`waiting` is the compute thread blocked on a full writer queue).
#[derive(Debug, Clone, Default)]
pub struct Stages {
    pub tokenize: f64,
    pub load: f64,
    pub forward_base: f64,
    pub forward_organism: f64,
    pub waiting: f64,
    pub logits: f64,
    pub statistics: f64,
    pub write: f64,
}

impl std::fmt::Display for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tokenise {:.1} s, load {:.1} s, forward base {:.1} s, forward organism {:.1} s, waiting for the writer {:.1} s; \
             writer thread: logits {:.1} s, next-token statistics {:.1} s, encode and write {:.1} s",
            self.tokenize,
            self.load,
            self.forward_base,
            self.forward_organism,
            self.waiting,
            self.logits,
            self.statistics,
            self.write
        )
    }
}

/// Tokenises every configured dataset with the base model's tokenizer and chat template.
pub fn tokenize_datasets(settings: &Settings, project_root: &Path, base: &ModelFiles) -> Result<Vec<TokenizedDataset>> {
    let pre = &settings.preprocessing;
    let special = &base.special;
    let text = |t: &Option<(String, u32)>| t.as_ref().map(|(s, _)| s.clone()).unwrap_or_default();
    let template = special
        .chat_template
        .as_deref()
        .map(|t| ChatTemplate::new(t, &text(&special.bos), &text(&special.eos)))
        .transpose()?;
    let limits = Limits {
        context_len: pre.context_len,
        max_samples: pre.max_samples,
        max_tokens: pre.max_tokens,
    };
    let mut out = Vec::new();
    for cfg in settings.datasets() {
        // Read a margin beyond max_samples: skipped conversations do not count.
        let samples = source::read(cfg, project_root, pre.max_samples.saturating_mul(2))?;
        let t = tokenize(
            &cfg.name,
            &cfg.split,
            &samples,
            &base.tokenizer,
            special.bos_to_add(),
            template.as_ref(),
            limits,
        )?;
        if t.sequences.is_empty() {
            bail!("dataset {} gave no sequences ({})", cfg.name, cfg.source);
        }
        out.push(t);
    }
    Ok(out)
}

/// The most next-token candidates the tokens table keeps per token and model.
pub const MAX_TOP_K: usize = 1024;

/// Runs preprocessing for the configured model, organism and datasets.
pub fn run(settings: &Settings, project_root: &Path) -> Result<Summary> {
    let started = Instant::now();
    let pre = &settings.preprocessing;
    let storage = ElementType::parse(&pre.dtype).with_context(|| {
        format!(
            "preprocessing.dtype {:?} is not one of bfloat16, float16, float32",
            pre.dtype
        )
    })?;
    let compression = parse_compression(&pre.compression)?;
    for (key, value) in [
        ("batch_size", pre.batch_size),
        ("context_len", pre.context_len),
        ("max_samples", pre.max_samples),
        ("max_tokens", pre.max_tokens),
    ] {
        if value == 0 {
            bail!("preprocessing.{key} must be at least 1 (it is a limit; there is no \"0 = unlimited\": give a large number)");
        }
    }
    for (key, value, table) in [
        ("top_k", pre.top_k, "tokens"),
        ("diff_top_k", pre.diff_top_k, "logit_diff"),
    ] {
        if value > MAX_TOP_K {
            bail!("preprocessing.{key} is at most {MAX_TOP_K} (got {value}): the {table} table keeps that many candidates per token");
        }
    }
    let (model, organism) = (settings.model.name.as_str(), settings.organism.name.as_str());
    PartitionKey::activations(model, organism, 0).validate()?;
    let layout = CacheLayout::new(&settings.cache_dir);
    // Everything that needs no weights is checked before any are read: the device, both checkpoints'
    // configs and tokenizers, the layers, every dataset (read, rendered, tokenised), the cache.
    let device = pre.device.open()?;
    let files = PairFiles::open(settings, project_root)?;
    let num_layers = files.num_layers()?;
    let layers = resolve_layers(&pre.layers, num_layers)?;
    let clock = Instant::now();
    let datasets = tokenize_datasets(settings, project_root, &files.base)?;
    let tokenize = clock.elapsed().as_secs_f64();
    let fp = fingerprint(&datasets);
    let tokenizer = files.base.special.describe();
    let plan = Plan::build(&layout, model, organism, &layers, storage, &fp, pre.diff_top_k)?;
    let tokens: usize = datasets.iter().map(TokenizedDataset::tokens).sum();
    if plan.is_empty() {
        return Ok(Summary {
            tokens,
            base_reused: true,
            seconds: started.elapsed().as_secs_f64(),
            tokenizer,
            ..Summary::default()
        });
    }
    layout.ensure_writable()?;
    let clock = Instant::now();
    let pair = files.load(settings, &device)?;
    let load = clock.elapsed().as_secs_f64();

    let options = WriteOptions {
        vector_compression: compression,
        settings: serde_json::json!({
            "model": settings.model,
            "organism": organism,
            "finetuned": settings.finetuned()?,
            "datasets": settings.datasets(),
            "preprocessing": pre,
            "layers": layers,
            "num_layers": num_layers,
        }),
        ..WriteOptions::default()
    };
    let d_model = pair.base.decoder.spec().hidden;
    let run_base = plan.runs(Side::Base);
    let run_organism = plan.runs(Side::Organism);
    if let Some(key) = &plan.vocab {
        write_vocab(
            &layout,
            key,
            &pair.base.files.tokenizer,
            pair.base.decoder.spec().vocab,
            &options,
        )?;
    }
    let candidates = Candidates {
        top_k: pre.top_k,
        diff_top_k: pre.diff_top_k,
    };
    let mut sink = Sink::create(
        &layout, &plan, storage, d_model, options, &datasets, &pair, candidates, &fp,
    )?;
    if !run_base && (sink.tokens.iter().any(|(s, _)| *s == Side::Organism) || plan.logit_diff.is_some()) {
        sink.cached_base = Some(FinalHiddenReader::open(
            &layout,
            &PartitionKey::final_hidden(model, BASE_ORGANISM),
        )?);
    }

    let capture: Vec<usize> = layers.iter().map(|&l| l as usize).collect();
    let (tx, rx) = sync_channel::<BatchOutput>(2);
    let (mut forward_base, mut forward_organism, mut waiting) = (0f64, 0f64, 0f64);
    let result = std::thread::scope(|scope| -> Result<Summary> {
        let writer = scope.spawn(|| sink.consume(rx));
        let compute = (|| -> Result<()> {
            for (d, dataset) in datasets.iter().enumerate() {
                let bar = progress_bar(dataset);
                for (b, chunk) in dataset.sequences.chunks(pre.batch_size).enumerate() {
                    let (ids, mask, lens) = batch_tensors(chunk, pair.base.decoder.device())?;
                    let forward = |m: &LoadedModel| -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
                        let out = m.decoder.forward(&ids, &mask, &capture, true)?;
                        let layers = out.layers.iter().map(|t| token_rows(t, &lens)).collect::<Result<_>>()?;
                        let fin = token_rows(out.final_hidden.as_ref().expect("requested"), &lens)?;
                        Ok((layers, fin))
                    };
                    let clock = Instant::now();
                    let base = run_base.then(|| forward(&pair.base)).transpose()?;
                    forward_base += clock.elapsed().as_secs_f64();
                    let clock = Instant::now();
                    let ft = run_organism.then(|| forward(&pair.organism)).transpose()?;
                    forward_organism += clock.elapsed().as_secs_f64();
                    let rows = lens.iter().sum::<usize>();
                    let msg = BatchOutput {
                        dataset: d,
                        first_seq: b * pre.batch_size,
                        sequences: chunk.len(),
                        base,
                        organism: ft,
                    };
                    let clock = Instant::now();
                    if tx.send(msg).is_err() {
                        break; // the writer failed; its error is returned below
                    }
                    waiting += clock.elapsed().as_secs_f64();
                    bar.inc(rows as u64);
                }
                bar.finish_and_clear();
            }
            Ok(())
        })();
        drop(tx);
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("the cache writer thread panicked"))?;
        compute?;
        written
    })?;
    // The writer thread timed its own stages; this thread's are added here.
    let stages = Stages {
        tokenize,
        load,
        forward_base,
        forward_organism,
        waiting,
        ..result.stages.clone()
    };
    Ok(Summary {
        tokens,
        base_reused: !run_base,
        seconds: started.elapsed().as_secs_f64(),
        tokenizer,
        stages,
        ..result
    })
}

fn progress_bar(dataset: &TokenizedDataset) -> ProgressBar {
    let bar = crate::progress::bar(dataset.tokens() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>22} [{bar:30}] {human_pos}/{human_len} tokens  {per_sec}  ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(dataset.name.clone());
    bar
}

/// Right-padded input ids, the attention mask, and each sequence's length.
fn batch_tensors(chunk: &[crate::data::tokenize::Sequence], device: &Device) -> Result<(Tensor, Tensor, Vec<usize>)> {
    let lens: Vec<usize> = chunk.iter().map(|s| s.ids.len()).collect();
    let width = lens.iter().copied().max().unwrap_or(0);
    let mut ids = vec![0u32; chunk.len() * width];
    let mut mask = vec![0u8; chunk.len() * width];
    for (i, s) in chunk.iter().enumerate() {
        ids[i * width..i * width + s.ids.len()].copy_from_slice(&s.ids);
        mask[i * width..i * width + s.ids.len()].fill(1);
    }
    let shape = (chunk.len(), width);
    Ok((
        Tensor::from_vec(ids, shape, device)?,
        Tensor::from_vec(mask, shape, device)?,
        lens,
    ))
}

/// The rows of a (batch, seq, d) tensor that are tokens (not padding), row-major f32.
fn token_rows(t: &Tensor, lens: &[usize]) -> Result<Vec<f32>> {
    let (_, s, d) = t.dims3()?;
    let all = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(lens.iter().sum::<usize>() * d);
    for (i, &len) in lens.iter().enumerate() {
        out.extend_from_slice(&all[i * s * d..(i * s + len) * d]);
    }
    Ok(out)
}
