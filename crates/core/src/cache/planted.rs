//! Synthetic caches with planted sparse features (orthonormal directions), so that dictionary methods can be checked against a known
//! answer: base and ft share `shared` random unit directions that fire at random with their own rates, and
//! ft alone adds `ft_only` directions, feature j firing exactly on the tokens whose id has bits 2j and 2j + 1
//! clear (a quarter of all tokens each, in every combination). ft − base is therefore a sum of the ft-only directions (plus noise).

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use super::layout::{CacheLayout, PartitionKey, BASE_ORGANISM};
use super::synth::{token_of, write_sequences, write_tokens, write_vocab, SynthSpec};
use super::vectors::VectorEncoding;
use super::writer::{ActivationBatch, ActivationWriter};

/// At most this many ft-only features (one per pair of bits of the token id).
pub const MAX_FT_ONLY: usize = 5;

/// Whether ft-only feature `j` fires on `token_id`.
pub fn ft_only_fires(j: usize, token_id: i32) -> bool {
    (token_id >> (2 * j)) & 3 == 0
}

/// What to plant. `cache` gives the model, the organism (its first), the layer (its first), the sizes and
/// the seed; its dtype is used for storage.
#[derive(Debug, Clone)]
pub struct PlantedSpec {
    pub cache: SynthSpec,
    pub shared: usize,
    pub ft_only: usize,
    /// Probability that a shared feature fires on a token.
    pub shared_rate: f32,
    /// Standard deviation of Gaussian noise on every coordinate of both sides.
    pub noise: f32,
}

/// The planted directions (unit vectors).
#[derive(Debug, Clone)]
pub struct PlantedTruth {
    pub shared: Vec<Vec<f32>>,
    pub ft_only: Vec<Vec<f32>>,
}

/// `n` random orthonormal directions (Gram–Schmidt on Gaussian vectors), so planted features do not overlap.
fn orthonormal(n: usize, d: usize, rng: &mut impl Rng) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = Vec::with_capacity(n);
    while out.len() < n {
        let mut v: Vec<f32> = (0..d).map(|_| rng.sample(StandardNormal)).collect();
        for u in &out {
            let dot: f32 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 1e-3 {
            out.push(v.into_iter().map(|x| x / norm).collect());
        }
    }
    out
}

/// Writes the planted cache (base and the organism at one layer, tokens, sequences, vocabulary).
pub fn write(layout: &CacheLayout, spec: &PlantedSpec) -> Result<PlantedTruth> {
    let c = &spec.cache;
    c.validate()?;
    anyhow::ensure!(
        spec.ft_only <= MAX_FT_ONLY,
        "planted: at most {MAX_FT_ONLY} ft-only features"
    );
    let d = c.d_model;
    let layer = c.layers[0];
    let organism = c.organisms[0].clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(c.seed);
    anyhow::ensure!(
        spec.shared + spec.ft_only <= d,
        "planted: {} orthogonal directions do not fit in d_model {d}",
        spec.shared + spec.ft_only
    );
    let mut directions = orthonormal(spec.shared + spec.ft_only, d, &mut rng);
    let ft_only = directions.split_off(spec.shared);
    let truth = PlantedTruth {
        shared: directions,
        ft_only,
    };
    let encoding = VectorEncoding::new(c.dtype, d);
    let mut base_writer = ActivationWriter::create(
        layout,
        PartitionKey::activations(&c.model, BASE_ORGANISM, layer),
        encoding,
        c.options.clone(),
    )?;
    let mut ft_writer = ActivationWriter::create(
        layout,
        PartitionKey::activations(&c.model, &organism, layer),
        encoding,
        c.options.clone(),
    )?;
    let rates: Vec<f32> = (0..spec.shared)
        .map(|j| spec.shared_rate * (0.5 + j as f32 / spec.shared.max(1) as f32))
        .collect();
    const CHUNK: usize = 4096;
    for start in (0..c.tokens).step_by(CHUNK) {
        let rows = CHUNK.min(c.tokens - start);
        let seq_id: Vec<i64> = (start..start + rows).map(|i| (i / c.seq_len) as i64).collect();
        let pos: Vec<i32> = (start..start + rows).map(|i| (i % c.seq_len) as i32).collect();
        let token_id: Vec<i32> = (start..start + rows).map(|i| token_of(i, c.seed)).collect();
        let mut base = vec![0f32; rows * d];
        let mut ft = vec![0f32; rows * d];
        for r in 0..rows {
            let (b, f) = (&mut base[r * d..(r + 1) * d], &mut ft[r * d..(r + 1) * d]);
            for (u, rate) in truth.shared.iter().zip(&rates) {
                if rng.random::<f32>() < *rate {
                    let a: f32 = rng.random_range(1.0..3.0);
                    for ((bi, fi), ui) in b.iter_mut().zip(f.iter_mut()).zip(u) {
                        *bi += a * ui;
                        *fi += a * ui;
                    }
                }
            }
            for (j, v) in truth.ft_only.iter().enumerate() {
                if ft_only_fires(j, token_id[r]) {
                    let a: f32 = rng.random_range(1.0..3.0);
                    for (fi, vi) in f.iter_mut().zip(v) {
                        *fi += a * vi;
                    }
                }
            }
            if spec.noise > 0.0 {
                for x in b.iter_mut().chain(f.iter_mut()) {
                    *x += spec.noise * rng.sample::<f32, _>(StandardNormal);
                }
            }
        }
        for (writer, vectors) in [(&mut base_writer, &base), (&mut ft_writer, &ft)] {
            writer.push(&ActivationBatch {
                dataset: &c.dataset,
                split: "train",
                seq_id: &seq_id,
                pos: &pos,
                token_id: &token_id,
                vectors,
            })?;
        }
    }
    base_writer.finish()?;
    ft_writer.finish()?;
    let organisms = [BASE_ORGANISM.to_string(), organism];
    write_tokens(layout, c, &organisms)?;
    write_sequences(layout, c)?;
    write_vocab(layout, c)?;
    Ok(truth)
}
