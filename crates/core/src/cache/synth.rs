//! Synthetic caches with known answers, for tests, benchmarks and trying diffsql without a model.
//!
//! Base vectors are standard normal. Organism number k (1-based, in the order given) adds
//! `k · (layer + 1)` to coordinate `layer mod d_model` of every base vector and nothing else, so for
//! float32 storage `normdiff(base, ft)` at layer L is exactly `k · (L + 1)` (up to float32 rounding;
//! bfloat16 rounding moves it by under 1%). Per-token KL in `tokens` is `0.01 · k · (pos mod 7)`.

use std::sync::Arc;

use anyhow::Result;
use datafusion::arrow::array::{Float32Array, Int32Array, Int64Array, ListArray, RecordBatch, StringArray};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field};
use diffsql_udfs::vector::{add_to_coordinate, ElementType};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use super::layout::{sequences_file_schema, tokens_file_schema, CacheLayout, PartitionKey, BASE_ORGANISM};
use super::vectors::VectorEncoding;
use super::writer::{ActivationBatch, ActivationWriter, PartitionWriter, WriteOptions};

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    pub model: String,
    pub organisms: Vec<String>,
    pub layers: Vec<i32>,
    pub tokens: usize,
    pub seq_len: usize,
    pub d_model: usize,
    pub dtype: ElementType,
    pub seed: u64,
    pub dataset: String,
    pub options: WriteOptions,
    /// Standard deviation of Gaussian noise added to every organism coordinate (0: the exact known answers;
    /// above 0, per-token statistics no longer tie, as in real activations).
    pub noise: f32,
}

impl Default for SynthSpec {
    fn default() -> Self {
        Self {
            model: "synthetic".into(),
            organisms: vec!["caps".into()],
            layers: vec![0, 1, 2, 3],
            tokens: 4096,
            seq_len: 64,
            d_model: 64,
            dtype: ElementType::Float32,
            seed: 0,
            dataset: "synthetic".into(),
            options: WriteOptions::default(),
            noise: 0.0,
        }
    }
}

/// Largest vector length a synthetic cache is made with (Gemma 3 27B has 5376).
pub const MAX_D_MODEL: usize = 65_536;

impl SynthSpec {
    /// Checks every size before anything is allocated or written; errors name the `diffsql synth` flag.
    pub fn validate(&self) -> Result<()> {
        let at_least_one = [
            ("--tokens", self.tokens),
            ("--seq-len", self.seq_len),
            ("--d-model", self.d_model),
            ("--rows-per-file", self.options.rows_per_file),
        ];
        for (flag, value) in at_least_one {
            if value == 0 {
                anyhow::bail!("synth: {flag} must be at least 1");
            }
        }
        if self.d_model > MAX_D_MODEL {
            anyhow::bail!("synth: --d-model {} is above the limit {MAX_D_MODEL}", self.d_model);
        }
        if self.tokens > i32::MAX as usize {
            anyhow::bail!("synth: --tokens {} is above the limit {}", self.tokens, i32::MAX);
        }
        if self.layers.is_empty() || self.layers.iter().any(|&l| l < 0) {
            anyhow::bail!("synth: --layers must list layer indices of 0 or more, e.g. 0,1,2,3");
        }
        if !self.noise.is_finite() || self.noise < 0.0 {
            anyhow::bail!(
                "synth: --noise must be a finite number of 0 or more (got {})",
                self.noise
            );
        }
        Ok(())
    }
}

/// The shift organism `k` (1-based) applies at `layer`: (coordinate, amount).
pub fn organism_shift(k: usize, layer: i32, d_model: usize) -> (usize, f32) {
    (layer as usize % d_model, (k as f32) * (layer as f32 + 1.0))
}

/// Rows generated per step (bounded memory whatever the size).
const CHUNK: usize = 8192;

/// Writes the synthetic cache; partitions that are already complete are left as they are. Returns how many
/// activation partitions were written (0: the cache was already complete).
pub fn write(layout: &CacheLayout, spec: &SynthSpec, mut progress: impl FnMut(usize)) -> Result<usize> {
    spec.validate()?;
    let encoding = VectorEncoding::new(spec.dtype, spec.d_model);
    let mut organisms = vec![BASE_ORGANISM.to_string()];
    organisms.extend(spec.organisms.iter().cloned());
    // One writer per (organism, layer) still to write.
    let mut writers: Vec<(usize, i32, ActivationWriter)> = Vec::new();
    for (k, organism) in organisms.iter().enumerate() {
        for &layer in &spec.layers {
            let key = PartitionKey::activations(&spec.model, organism, layer);
            if layout.manifest(&key)?.is_none() {
                writers.push((
                    k,
                    layer,
                    ActivationWriter::create(layout, key, encoding, spec.options.clone())?,
                ));
            }
        }
    }
    let written = writers.len();
    let d = spec.d_model;
    let tokens = if written == 0 { 0 } else { spec.tokens };
    let mut base = vec![0f32; CHUNK * d];
    let mut shifted = vec![0f32; CHUNK * d];
    for start in (0..tokens).step_by(CHUNK) {
        let rows = CHUNK.min(tokens - start);
        let seq_id: Vec<i64> = (start..start + rows).map(|i| (i / spec.seq_len) as i64).collect();
        let pos: Vec<i32> = (start..start + rows).map(|i| (i % spec.seq_len) as i32).collect();
        let token_id: Vec<i32> = (start..start + rows).map(|i| token_of(i, spec.seed)).collect();
        for &layer in &spec.layers {
            if !writers.iter().any(|(_, l, _)| *l == layer) {
                continue;
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed ^ ((layer as u64) << 40) ^ start as u64);
            for x in &mut base[..rows * d] {
                *x = rng.sample(StandardNormal);
            }
            for (k, l, writer) in writers.iter_mut().filter(|(_, l, _)| *l == layer) {
                let vectors = if *k == 0 {
                    &base[..rows * d]
                } else {
                    let (coord, amount) = organism_shift(*k, *l, d);
                    shifted[..rows * d].copy_from_slice(&base[..rows * d]);
                    add_to_coordinate(&mut shifted[..rows * d], d, coord, amount);
                    if spec.noise > 0.0 {
                        let mut noise =
                            rand::rngs::StdRng::seed_from_u64(spec.seed ^ ((*k as u64) << 32) ^ start as u64);
                        for x in &mut shifted[..rows * d] {
                            *x += spec.noise * noise.sample::<f32, _>(StandardNormal);
                        }
                    }
                    &shifted[..rows * d]
                };
                writer.push(&ActivationBatch {
                    dataset: &spec.dataset,
                    split: "train",
                    seq_id: &seq_id,
                    pos: &pos,
                    token_id: &token_id,
                    vectors,
                })?;
            }
        }
        progress(start + rows);
    }
    for (_, _, w) in writers {
        w.finish()?;
    }
    write_tokens(layout, spec, &organisms)?;
    write_sequences(layout, spec)?;
    write_vocab(layout, spec)?;
    Ok(written)
}

/// Token ids of a synthetic cache lie below this.
const VOCAB: i32 = 1000;

/// The vocabulary: token `t{id}` for every id a synthetic token can have.
pub(crate) fn write_vocab(layout: &CacheLayout, spec: &SynthSpec) -> Result<()> {
    let key = PartitionKey::vocab(&spec.model);
    if layout.manifest(&key)?.is_some() {
        return Ok(());
    }
    let schema = super::layout::vocab_file_schema();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int32Array::from_iter_values(0..VOCAB)),
            Arc::new(StringArray::from_iter_values((0..VOCAB).map(|t| format!("t{t}")))),
        ],
    )?;
    let mut w = PartitionWriter::create(layout, key, schema, spec.options.clone())?;
    w.write(&batch)?;
    w.finish()?;
    Ok(())
}

pub(crate) fn token_of(i: usize, seed: u64) -> i32 {
    ((i as u64).wrapping_mul(2654435761).wrapping_add(seed) % VOCAB as u64) as i32
}

pub(crate) fn write_tokens(layout: &CacheLayout, spec: &SynthSpec, organisms: &[String]) -> Result<()> {
    let schema = tokens_file_schema();
    let n = spec.tokens;
    for (k, organism) in organisms.iter().enumerate() {
        let key = PartitionKey::tokens(&spec.model, organism);
        if layout.manifest(&key)?.is_some() {
            continue;
        }
        let pos: Vec<i32> = (0..n).map(|i| (i % spec.seq_len) as i32).collect();
        let kl: Float32Array = pos
            .iter()
            .map(|&p| (k > 0).then_some(0.01 * k as f32 * (p % 7) as f32))
            .collect();
        let ids: Vec<i32> = (0..n).map(|i| token_of(i, spec.seed)).collect();
        let item = |t: DataType| Arc::new(Field::new_list_field(t, true));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec![spec.dataset.as_str(); n])),
                Arc::new(StringArray::from(vec!["train"; n])),
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| (i / spec.seq_len) as i64))),
                Arc::new(Int32Array::from(pos)),
                Arc::new(Int32Array::from(ids.clone())),
                Arc::new(StringArray::from_iter_values(ids.iter().map(|t| format!("t{t}")))),
                Arc::new(Float32Array::from(vec![-1.0f32; n])),
                Arc::new(ListArray::new(
                    item(DataType::Int32),
                    OffsetBuffer::from_lengths(vec![1; n]),
                    Arc::new(Int32Array::from(ids)),
                    None,
                )),
                Arc::new(ListArray::new(
                    item(DataType::Float32),
                    OffsetBuffer::from_lengths(vec![1; n]),
                    Arc::new(Float32Array::from(vec![-0.5f32; n])),
                    None,
                )),
                Arc::new(kl),
            ],
        )?;
        let mut w = PartitionWriter::create(layout, key, Arc::clone(&schema), spec.options.clone())?;
        w.write(&batch)?;
        w.finish()?;
    }
    Ok(())
}

pub(crate) fn write_sequences(layout: &CacheLayout, spec: &SynthSpec) -> Result<()> {
    let key = PartitionKey::sequences(&spec.model);
    if layout.manifest(&key)?.is_some() {
        return Ok(());
    }
    let n = spec.tokens.div_ceil(spec.seq_len);
    let schema = sequences_file_schema();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(vec![spec.dataset.as_str(); n])),
            Arc::new(StringArray::from(vec!["train"; n])),
            Arc::new(Int64Array::from_iter_values(0..n as i64)),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("synthetic sequence {i}")),
            )),
            Arc::new(Int32Array::from_iter_values(
                (0..n).map(|i| (spec.tokens - i * spec.seq_len).min(spec.seq_len) as i32),
            )),
        ],
    )?;
    let mut w = PartitionWriter::create(layout, key, schema, spec.options.clone())?;
    w.write(&batch)?;
    w.finish()?;
    Ok(())
}
