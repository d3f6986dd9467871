//! One preprocessing run: tokenise the datasets once, run the base model and the organism over identical
//! batches, and write every cache partition that is not complete yet.
//!
//! The base model's partitions (`organism=base`) are shared by every organism: when they are complete and
//! hold the same tokens (same fingerprint) the base model is not run again; its logits for KL are recomputed
//! exactly from the cached `final_hidden`. Writing and the per-token statistics run on a second thread, so
//! they overlap the next batch's forward passes. Every partition is written atomically; an interrupted run
//! leaves only staging files, and a rerun writes what is missing (a finished run is a no-op).

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use datafusion::arrow::array::{ArrayRef, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray};
use diffsql_udfs::vector::ElementType;
use indicatif::{ProgressBar, ProgressStyle};

use super::final_hidden::FinalHiddenReader;
use super::next_token::{row_stats, ColumnBuilder, NextTokenArrays};
use crate::cache::layout::{sequences_file_schema, tokens_file_schema, BASE_ORGANISM};
use crate::cache::vectors::VectorEncoding;
use crate::cache::writer::{parse_compression, TokenFingerprint};
use crate::cache::{ActivationBatch, ActivationWriter, CacheLayout, PartitionKey, PartitionWriter, WriteOptions};
use crate::config::settings::{locate, resolve_layers, ModelConfig, Settings};
use crate::data::chat::ChatTemplate;
use crate::data::source;
use crate::data::tokenize::{tokenize, Limits, TokenizedDataset};
use crate::model::load::{load, LoadedModel, ModelSource};

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
}

impl Summary {
    pub fn is_noop(&self) -> bool {
        self.partitions_written == 0
    }
}

/// The compute dtype named in a model config.
pub fn compute_dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "float32" | "f32" => DType::F32,
        "bfloat16" | "bf16" => DType::BF16,
        "float16" | "f16" => DType::F16,
        other => bail!("model dtype {other:?} is not one of float32, bfloat16, float16"),
    })
}

/// The base model and the organism, loaded.
pub struct ModelPair {
    pub base: LoadedModel,
    pub organism: LoadedModel,
}

/// Loads the configured base model and the organism's checkpoint for it.
pub fn load_pair(settings: &Settings, project_root: &Path) -> Result<ModelPair> {
    let dtype = compute_dtype(&settings.model.dtype)?;
    let device = settings.preprocessing.device.open()?;
    let model = &settings.model;
    let base_source = model_source(model, project_root)?;
    let base = load(&base_source, None, dtype, &device).with_context(|| format!("model {}", model.name))?;
    let ft = settings.finetuned()?;
    let what = format!("organism {} for model {}", settings.organism.name, model.name);
    let organism = match (&ft.source, &ft.adapter) {
        (Some(src), None) => load(&source_of(&locate(src, project_root), &ft.revision)?, None, dtype, &device),
        (None, Some(adapter)) => {
            let dir = crate::hub::resolve_adapter(&locate(adapter, project_root), &ft.revision)?;
            load(&base_source, Some(&dir), dtype, &device)
        }
        _ => bail!(
            "{what}: [finetuned.{}] in configs/organism/{}.toml needs exactly one of source (a full model) or adapter (a PEFT LoRA)",
            model.name,
            settings.organism.name
        ),
    }
    .with_context(|| what.clone())?;
    let (b, o) = (base.decoder.spec(), organism.decoder.spec());
    if (b.vocab, b.hidden, base.decoder.num_layers()) != (o.vocab, o.hidden, organism.decoder.num_layers()) {
        bail!(
            "{what}: the finetuned model is not a finetune of the base (vocab, d_model, layers {:?} vs {:?})",
            (b.vocab, b.hidden, base.decoder.num_layers()),
            (o.vocab, o.hidden, organism.decoder.num_layers())
        );
    }
    Ok(ModelPair { base, organism })
}

/// Where a model config's weights come from (a path relative to the project, or a hub id at its revision).
pub fn model_source(model: &ModelConfig, project_root: &Path) -> Result<ModelSource> {
    source_of(&locate(&model.source, project_root), &model.revision)
}

fn source_of(s: &str, revision: &str) -> Result<ModelSource> {
    Ok(match ModelSource::parse(s)? {
        ModelSource::Hub { repo, revision: r } if r == "main" => ModelSource::Hub {
            repo,
            revision: revision.to_string(),
        },
        other => other,
    })
}

/// Tokenises every configured dataset with the base model's tokenizer and chat template.
pub fn tokenize_datasets(
    settings: &Settings,
    project_root: &Path,
    base: &LoadedModel,
) -> Result<Vec<TokenizedDataset>> {
    let pre = &settings.preprocessing;
    let text = |t: &Option<(String, u32)>| t.as_ref().map(|(s, _)| s.clone()).unwrap_or_default();
    let template = base
        .chat_template
        .as_deref()
        .map(|t| ChatTemplate::new(t, &text(&base.bos), &text(&base.eos)))
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
            base.bos.as_ref().map(|b| b.1),
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
enum Side {
    Base,
    Organism,
}

/// The partitions of this run that still have to be written.
struct Plan {
    activations: Vec<(Side, usize, PartitionKey)>,
    /// The base model's final hidden state (the only one read back, by later organism runs).
    final_hidden: Option<PartitionKey>,
    tokens: Vec<(Side, PartitionKey)>,
    sequences: Option<PartitionKey>,
    vocab: Option<PartitionKey>,
}

impl Plan {
    fn len(&self) -> usize {
        self.activations.len()
            + usize::from(self.final_hidden.is_some())
            + self.tokens.len()
            + usize::from(self.sequences.is_some())
            + usize::from(self.vocab.is_some())
    }
    fn runs(&self, side: Side) -> bool {
        self.activations.iter().any(|(s, ..)| *s == side)
            || (side == Side::Base && self.final_hidden.is_some())
            || self.tokens.iter().any(|(s, _)| *s == side)
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
    if pre.batch_size == 0 || pre.context_len == 0 {
        bail!("preprocessing.batch_size and preprocessing.context_len must be at least 1");
    }
    let (model, organism) = (settings.model.name.as_str(), settings.organism.name.as_str());
    PartitionKey::activations(model, organism, 0).validate()?;
    let layout = CacheLayout::new(&settings.cache_dir);
    let pair = load_pair(settings, project_root)?;
    let layers = resolve_layers(&pre.layers, pair.base.decoder.num_layers())?;
    let datasets = tokenize_datasets(settings, project_root, &pair.base)?;
    let fp = fingerprint(&datasets);

    let mut plan = Plan {
        activations: Vec::new(),
        final_hidden: None,
        tokens: Vec::new(),
        sequences: None,
        vocab: None,
    };
    for (side, name) in [(Side::Base, BASE_ORGANISM), (Side::Organism, organism)] {
        for (i, &layer) in layers.iter().enumerate() {
            let key = PartitionKey::activations(model, name, layer);
            if !complete(&layout, &key, &fp, Some(storage))? {
                plan.activations.push((side, i, key));
            }
        }
        let key = PartitionKey::tokens(model, name);
        if !complete(&layout, &key, &fp, None)? {
            plan.tokens.push((side, key));
        }
    }
    let key = PartitionKey::final_hidden(model, BASE_ORGANISM);
    if !complete(&layout, &key, &fp, None)? {
        plan.final_hidden = Some(key);
    }
    let key = PartitionKey::sequences(model);
    if layout.manifest(&key)?.is_none() {
        plan.sequences = Some(key);
    }
    let key = PartitionKey::vocab(model);
    if layout.manifest(&key)?.is_none() {
        plan.vocab = Some(key);
    }
    let tokens: usize = datasets.iter().map(TokenizedDataset::tokens).sum();
    if plan.len() == 0 {
        return Ok(Summary {
            tokens,
            base_reused: true,
            seconds: started.elapsed().as_secs_f64(),
            ..Summary::default()
        });
    }

    let options = WriteOptions {
        vector_compression: compression,
        settings: serde_json::json!({
            "model": settings.model,
            "organism": organism,
            "finetuned": settings.finetuned()?,
            "datasets": settings.datasets(),
            "preprocessing": pre,
            "layers": layers,
            "num_layers": pair.base.decoder.num_layers(),
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
            &pair.base.tokenizer,
            pair.base.decoder.spec().vocab,
            &options,
        )?;
    }
    let mut sink = Sink::create(&layout, &plan, storage, d_model, options, &datasets, &pair, pre.top_k)?;
    if !run_base && sink.tokens.iter().any(|(s, _)| *s == Side::Organism) {
        sink.cached_base = Some(FinalHiddenReader::open(
            &layout,
            &PartitionKey::final_hidden(model, BASE_ORGANISM),
        )?);
    }

    let capture: Vec<usize> = layers.iter().map(|&l| l as usize).collect();
    let (tx, rx) = sync_channel::<BatchOutput>(2);
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
                    let base = run_base.then(|| forward(&pair.base)).transpose()?;
                    let ft = run_organism.then(|| forward(&pair.organism)).transpose()?;
                    let rows = lens.iter().sum::<usize>();
                    let msg = BatchOutput {
                        dataset: d,
                        first_seq: b * pre.batch_size,
                        sequences: chunk.len(),
                        base,
                        organism: ft,
                    };
                    if tx.send(msg).is_err() {
                        break; // the writer failed; its error is returned below
                    }
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
    Ok(Summary {
        tokens,
        base_reused: !run_base,
        seconds: started.elapsed().as_secs_f64(),
        ..result
    })
}

/// Writes every token id of the tokenizer with its decoded text.
fn write_vocab(
    layout: &CacheLayout,
    key: &PartitionKey,
    tokenizer: &tokenizers::Tokenizer,
    vocab: usize,
    options: &WriteOptions,
) -> Result<crate::cache::Manifest> {
    let schema = crate::cache::layout::vocab_file_schema();
    let text =
        StringArray::from_iter_values((0..vocab as u32).map(|id| tokenizer.decode(&[id], false).unwrap_or_default()));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![Arc::new(Int32Array::from_iter_values(0..vocab as i32)), Arc::new(text)],
    )?;
    let mut w = PartitionWriter::create(layout, key.clone(), schema, options.clone())?;
    w.write(&batch)?;
    w.finish()
}

fn progress_bar(dataset: &TokenizedDataset) -> ProgressBar {
    let bar = ProgressBar::new(dataset.tokens() as u64);
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

/// One batch's outputs for the writer: per model, each captured layer's token rows and the final hidden.
struct BatchOutput {
    dataset: usize,
    first_seq: usize,
    sequences: usize,
    base: Option<(Vec<Vec<f32>>, Vec<f32>)>,
    organism: Option<(Vec<Vec<f32>>, Vec<f32>)>,
}

/// Owns the writers of the partitions to write; computes next-token statistics.
struct Sink<'a> {
    activations: Vec<(Side, usize, ActivationWriter)>,
    final_hidden: Option<ActivationWriter>,
    tokens: Vec<(Side, PartitionWriter)>,
    sequences: Option<PartitionWriter>,
    cached_base: Option<FinalHiddenReader>,
    datasets: &'a [TokenizedDataset],
    pair: &'a ModelPair,
    top_k: usize,
    d_model: usize,
    token_text: Vec<Option<String>>,
}

impl<'a> Sink<'a> {
    #[allow(clippy::too_many_arguments)]
    fn create(
        layout: &CacheLayout,
        plan: &Plan,
        storage: ElementType,
        d_model: usize,
        options: WriteOptions,
        datasets: &'a [TokenizedDataset],
        pair: &'a ModelPair,
        top_k: usize,
    ) -> Result<Self> {
        let activation = |key: &PartitionKey, dtype| {
            ActivationWriter::create(
                layout,
                key.clone(),
                VectorEncoding::new(dtype, d_model),
                options.clone(),
            )
        };
        let activations = plan
            .activations
            .iter()
            .map(|(s, i, k)| Ok((*s, *i, activation(k, storage)?)))
            .collect::<Result<_>>()?;
        let final_hidden = plan
            .final_hidden
            .as_ref()
            .map(|k| activation(k, ElementType::Float32))
            .transpose()?;
        let tokens = plan
            .tokens
            .iter()
            .map(|(s, k)| {
                Ok((
                    *s,
                    PartitionWriter::create(layout, k.clone(), tokens_file_schema(), options.clone())?,
                ))
            })
            .collect::<Result<_>>()?;
        let sequences = plan
            .sequences
            .as_ref()
            .map(|k| PartitionWriter::create(layout, k.clone(), sequences_file_schema(), options.clone()))
            .transpose()?;
        Ok(Self {
            activations,
            final_hidden,
            tokens,
            sequences,
            cached_base: None,
            datasets,
            pair,
            top_k,
            d_model,
            token_text: vec![None; pair.base.decoder.spec().vocab],
        })
    }

    fn consume(mut self, rx: Receiver<BatchOutput>) -> Result<Summary> {
        for msg in rx {
            self.write_batch(msg)?;
        }
        let mut summary = Summary::default();
        let mut count = |m: crate::cache::Manifest| {
            summary.partitions_written += 1;
            summary.rows_written += m.rows;
            summary.bytes_written += m.bytes();
        };
        for (_, _, w) in self.activations {
            count(w.finish()?);
        }
        if let Some(w) = self.final_hidden {
            count(w.finish()?);
        }
        for (_, w) in self.tokens {
            count(w.finish()?);
        }
        if let Some(w) = self.sequences {
            count(w.finish()?);
        }
        Ok(summary)
    }

    fn write_batch(&mut self, msg: BatchOutput) -> Result<()> {
        let dataset = &self.datasets[msg.dataset];
        let seqs = &dataset.sequences[msg.first_seq..msg.first_seq + msg.sequences];
        let mut seq_id = Vec::new();
        let mut pos = Vec::new();
        let mut token_id = Vec::new();
        let mut next = Vec::new();
        for s in seqs {
            for (p, &t) in s.ids.iter().enumerate() {
                seq_id.push(s.seq_id);
                pos.push(p as i32);
                token_id.push(t as i32);
                next.push(s.ids.get(p + 1).copied());
            }
        }
        let rows = seq_id.len();
        let batch = |vectors| ActivationBatch {
            dataset: &dataset.name,
            split: &dataset.split,
            seq_id: &seq_id,
            pos: &pos,
            token_id: &token_id,
            vectors,
        };
        for (side, i, w) in &mut self.activations {
            let out = if *side == Side::Base { &msg.base } else { &msg.organism };
            let (layers, _) = out.as_ref().expect("the side with partitions to write was run");
            w.push(&batch(&layers[*i]))?;
        }
        if let Some(w) = &mut self.final_hidden {
            let (_, fin) = msg
                .base
                .as_ref()
                .expect("the base model runs when its final_hidden is written");
            w.push(&batch(fin))?;
        }
        if !self.tokens.is_empty() {
            // The base model's final hidden state: from this batch's forward, or read back from the cache.
            let base_final: std::borrow::Cow<[f32]> = match (&msg.base, &mut self.cached_base) {
                (Some((_, f)), _) => f.as_slice().into(),
                (None, Some(reader)) => reader.next_rows(rows, self.d_model)?.into(),
                (None, None) => bail!("internal: no base final hidden state for the tokens table"),
            };
            let ft_final = msg.organism.as_ref().map(|(_, f)| f.as_slice());
            let columns = self.token_columns(&base_final, ft_final, &next)?;
            let keys: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(vec![dataset.name.as_str(); rows])),
                Arc::new(StringArray::from(vec![dataset.split.as_str(); rows])),
                Arc::new(Int64Array::from(seq_id.clone())),
                Arc::new(Int32Array::from(pos.clone())),
                Arc::new(Int32Array::from(token_id.clone())),
            ];
            let text: ArrayRef = Arc::new(StringArray::from_iter_values(
                token_id.iter().map(|&t| self.text_of(t as u32)),
            ));
            for (side, w) in &mut self.tokens {
                let c = if *side == Side::Base {
                    &columns.base
                } else {
                    columns.organism.as_ref().expect("run")
                };
                let kl: ArrayRef = match side {
                    Side::Base => Arc::new(Float32Array::new_null(rows)),
                    Side::Organism => Arc::new(Float32Array::from(columns.kl.clone())),
                };
                let mut cols = keys.clone();
                cols.extend([
                    Arc::clone(&text),
                    c.logprob.clone(),
                    c.topk_ids.clone(),
                    c.topk_logprobs.clone(),
                    kl,
                ]);
                w.write(&RecordBatch::try_new(tokens_file_schema(), cols)?)?;
            }
        }
        if let Some(w) = &mut self.sequences {
            let n = seqs.len();
            let batch = RecordBatch::try_new(
                sequences_file_schema(),
                vec![
                    Arc::new(StringArray::from(vec![dataset.name.as_str(); n])),
                    Arc::new(StringArray::from(vec![dataset.split.as_str(); n])),
                    Arc::new(Int64Array::from_iter_values(seqs.iter().map(|s| s.seq_id))),
                    Arc::new(StringArray::from_iter_values(seqs.iter().map(|s| s.text.as_str()))),
                    Arc::new(Int32Array::from_iter_values(seqs.iter().map(|s| s.ids.len() as i32))),
                ],
            )?;
            w.write(&batch)?;
        }
        Ok(())
    }

    fn text_of(&mut self, id: u32) -> String {
        let slot = &mut self.token_text[id as usize];
        slot.get_or_insert_with(|| self.pair.base.tokenizer.decode(&[id], false).unwrap_or_default())
            .clone()
    }

    /// Next-token columns of both models and KL(ft‖base), from the final hidden states.
    fn token_columns(
        &self,
        base_final: &[f32],
        ft_final: Option<&[f32]>,
        next: &[Option<u32>],
    ) -> Result<TokenColumns> {
        let rows = next.len();
        let mut base = ColumnBuilder::default();
        let mut organism = ft_final.map(|_| ColumnBuilder::default());
        let mut kls = Vec::with_capacity(rows);
        // Logits in chunks bound the memory to CHUNK × vocab floats per model.
        const CHUNK: usize = 256;
        let d = self.d_model;
        for start in (0..rows).step_by(CHUNK) {
            let n = CHUNK.min(rows - start);
            let logits = |dec: &crate::model::decoder::Decoder, h: &[f32]| -> Result<Tensor> {
                let x = Tensor::from_slice(&h[start * d..(start + n) * d], (1, n, d), dec.device())?;
                Ok(dec.logits(&x.to_dtype(dec.dtype())?)?.squeeze(0)?)
            };
            let lb = logits(&self.pair.base.decoder, base_final)?;
            let lf = ft_final.map(|f| logits(&self.pair.organism.decoder, f)).transpose()?;
            for row in row_stats(&lb, lf.as_ref(), &next[start..start + n], self.top_k)? {
                base.push(row.base);
                if let (Some((t, kl)), Some(o)) = (row.organism, organism.as_mut()) {
                    o.push(t);
                    kls.push(kl);
                }
            }
        }
        Ok(TokenColumns {
            base: base.finish(),
            organism: organism.map(ColumnBuilder::finish),
            kl: kls,
        })
    }
}

struct TokenColumns {
    base: NextTokenArrays,
    organism: Option<NextTokenArrays>,
    kl: Vec<f32>,
}
