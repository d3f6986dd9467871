//! A sparse dictionary over one side (an SAE on ft − base) or both sides (a crosscoder on base and ft) of the
//! residual stream, with BatchTopK or L1 sparsity, its loss with the auxiliary-k term for dead latents, and
//! Adam. Both are the same model: the input row is the sides' vectors side by side (width = sides × d), the
//! encoder reads all of it, the decoder writes all of it, and a latent's decoder norm is the sum of its
//! per-side norms.
//!
//! The algorithm follows the published BatchTopK crosscoder (Minder, Dumas et al. 2025, arXiv 2504.02922;
//! Bussmann et al. 2024 for BatchTopK) and is checked step for step against `tools/dictionary_reference.py`.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

/// How sparsity is enforced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sparsity {
    /// Keep the k · batch largest (decoder-norm-scaled) activations of a batch; at inference, those above a
    /// threshold learned during training.
    BatchTopK,
    /// ReLU activations with an L1 penalty on activation × decoder norm.
    L1,
}

/// The shape and kind of a dictionary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoderSpec {
    /// 1 (one vector per row) or 2 (base and ft side by side).
    pub sides: usize,
    pub d_model: usize,
    pub latents: usize,
    pub sparsity: Sparsity,
    /// SAE convention: decoder rows kept at unit norm, and the decoder bias subtracted before encoding.
    pub sae: bool,
}

impl CoderSpec {
    /// Values per input row.
    pub fn width(&self) -> usize {
        self.sides * self.d_model
    }
}

/// The weights: the encoder (width × latents), its bias, the decoder (latents × width) and its bias.
pub struct SparseCoder {
    pub spec: CoderSpec,
    pub w_enc: Var,
    pub b_enc: Var,
    pub w_dec: Var,
    pub b_dec: Var,
    /// BatchTopK inference threshold on scaled activations (negative until learned).
    pub threshold: f32,
}

/// What one training step needs besides the batch.
#[derive(Debug, Clone)]
pub struct StepSettings {
    /// Active latents per row on average (BatchTopK).
    pub k: usize,
    /// Latents the auxiliary loss may use per row.
    pub k_aux: usize,
    /// Which latents are dead (have not fired for long).
    pub dead: Vec<bool>,
    pub auxk_alpha: f32,
    /// L1 coefficient (L1 sparsity).
    pub l1: f32,
}

/// What a forward pass measured.
#[derive(Debug, Clone, Default)]
pub struct StepStats {
    pub loss: f32,
    pub l2: f32,
    pub auxk: f32,
    pub sparsity_loss: f32,
    /// Fraction of variance explained in this batch.
    pub fve: f32,
    /// Mean active latents per row.
    pub l0: f32,
    /// Which latents fired in the batch.
    pub fired: Vec<bool>,
    /// Smallest selected scaled activation (BatchTopK), the value the threshold tracks.
    pub min_selected: Option<f32>,
}

impl SparseCoder {
    /// A new dictionary: random decoder directions, the same on every side (unit norm per row for an SAE;
    /// 1/√sides per side for a crosscoder), the encoder their transpose, zero biases. (A decoder bias started at the data mean, as
    /// some SAE trainers do, split planted features over several latents in our recovery tests.)
    pub fn new(spec: CoderSpec, seed: u64, device: &Device) -> Result<Self> {
        let (m, d, w) = (spec.latents, spec.d_model, spec.width());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut dec = vec![0f32; m * w];
        let target = 1.0 / (spec.sides as f32).sqrt();
        let mut direction = vec![0f32; d];
        for row in dec.chunks_exact_mut(w) {
            direction.iter_mut().for_each(|v| *v = rng.sample(StandardNormal));
            let norm = direction.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            // Every side starts with the same direction: a latent starts shared, and becomes specific to
            // one model only where the data makes it.
            for side in row.chunks_exact_mut(d) {
                side.iter_mut()
                    .zip(&direction)
                    .for_each(|(s, v)| *s = v * target / norm);
            }
        }
        let w_dec = Tensor::from_vec(dec, (m, w), device)?;
        let w_enc = w_dec.t()?.contiguous()?;
        Ok(Self {
            spec,
            w_enc: Var::from_tensor(&w_enc)?,
            b_enc: Var::zeros(m, DType::F32, device)?,
            w_dec: Var::from_tensor(&w_dec)?,
            b_dec: Var::zeros(w, DType::F32, device)?,
            threshold: -1.0,
        })
    }

    /// The trainable parameters in a fixed order (checkpoints and Adam state follow it).
    pub fn vars(&self) -> [&Var; 4] {
        [&self.w_enc, &self.b_enc, &self.w_dec, &self.b_dec]
    }

    /// Names of [`Self::vars`] in checkpoints and fixtures.
    pub const VAR_NAMES: [&'static str; 4] = ["w_enc", "b_enc", "w_dec", "b_dec"];

    /// Sum over sides of each latent's decoder norm (latents), differentiable.
    pub fn decoder_norms(&self) -> Result<Tensor> {
        let (d, sides) = (self.spec.d_model, self.spec.sides);
        let mut total: Option<Tensor> = None;
        for s in 0..sides {
            let n = self.w_dec.narrow(1, s * d, d)?.sqr()?.sum(1)?.sqrt()?;
            total = Some(match total {
                None => n,
                Some(t) => (t + n)?,
            });
        }
        Ok(total.expect("at least one side"))
    }

    /// ReLU pre-activations of a batch (rows × latents).
    pub fn activations(&self, x: &Tensor) -> Result<Tensor> {
        let input = if self.spec.sae {
            x.broadcast_sub(self.b_dec.as_tensor())?
        } else {
            x.clone()
        };
        Ok(input
            .matmul(self.w_enc.as_tensor())?
            .broadcast_add(self.b_enc.as_tensor())?
            .relu()?)
    }

    /// Sparse codes for inference: BatchTopK keeps activations whose scaled value exceeds the learned
    /// threshold; L1 keeps every positive activation.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let f = self.activations(x)?;
        match self.spec.sparsity {
            Sparsity::L1 => Ok(f),
            Sparsity::BatchTopK => {
                let scaled = f.broadcast_mul(&self.decoder_norms()?.detach())?;
                let keep = scaled.gt(self.threshold.max(0.0) as f64)?.to_dtype(DType::F32)?;
                Ok((f * keep)?)
            }
        }
    }

    /// Reconstruction of the input from codes.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        Ok(codes
            .matmul(self.w_dec.as_tensor())?
            .broadcast_add(self.b_dec.as_tensor())?)
    }

    /// The training loss of a batch (rows × width) and what it measured.
    pub fn loss(&self, x: &Tensor, step: &StepSettings) -> Result<(Tensor, StepStats)> {
        let rows = x.dim(0)?;
        let f = self.activations(x)?;
        let norms = self.decoder_norms()?;
        let mut stats = StepStats::default();
        let (codes, sparsity_loss) = match self.spec.sparsity {
            Sparsity::BatchTopK => {
                let scaled = f.detach().broadcast_mul(&norms.detach())?;
                let cut = batch_top_k_cut(&scaled, step.k * rows)?;
                stats.min_selected = cut.filter(|c| *c > 0.0);
                let mask = match cut {
                    Some(c) => scaled.ge(c as f64)?.to_dtype(DType::F32)?,
                    None => scaled.gt(0.0)?.to_dtype(DType::F32)?,
                };
                ((&f * mask)?, None)
            }
            Sparsity::L1 => {
                let penalty = f.broadcast_mul(&norms)?.sum(1)?.mean(0)?;
                (f.clone(), Some(penalty))
            }
        };
        let x_hat = self.decode(&codes)?;
        let err = (x - &x_hat)?;
        let l2 = err.sqr()?.sum(1)?.mean(0)?;
        let mut loss = l2.clone();
        if let Some(p) = &sparsity_loss {
            loss = (loss + (p * step.l1 as f64)?)?;
            stats.sparsity_loss = p.to_scalar::<f32>()?;
        }
        let dead = step.dead.iter().filter(|d| **d).count();
        if self.spec.sparsity == Sparsity::BatchTopK && dead > 0 && step.auxk_alpha > 0.0 {
            let aux = self.auxk_loss(&f, &err.detach(), &step.dead, step.k_aux.min(dead))?;
            stats.auxk = aux.to_scalar::<f32>()?;
            loss = (loss + (aux * step.auxk_alpha as f64)?)?;
        }
        let centred = x
            .broadcast_sub(&x.mean_keepdim(0)?)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()?;
        stats.l2 = l2.to_scalar::<f32>()?;
        stats.loss = loss.to_scalar::<f32>()?;
        stats.fve = if centred > 0.0 {
            1.0 - stats.l2 * rows as f32 / centred
        } else {
            0.0
        };
        let active = codes.detach().gt(0.0)?.to_dtype(DType::F32)?;
        stats.l0 = active.sum_all()?.to_scalar::<f32>()? / rows as f32;
        stats.fired = active.sum(0)?.to_vec1::<f32>()?.into_iter().map(|c| c > 0.0).collect();
        Ok((loss, stats))
    }

    /// The auxiliary-k loss: the residual predicted from each row's `k_aux` largest dead-latent activations,
    /// as a squared error normalised by the residual's variance.
    fn auxk_loss(&self, f: &Tensor, residual: &Tensor, dead: &[bool], k_aux: usize) -> Result<Tensor> {
        let device = f.device();
        let dead_mask = Tensor::from_vec(
            dead.iter().map(|&d| if d { 1f32 } else { 0.0 }).collect::<Vec<_>>(),
            dead.len(),
            device,
        )?;
        let f_dead = f.broadcast_mul(&dead_mask)?;
        let values = f_dead.detach().flatten_all()?.to_vec1::<f32>()?;
        let cuts = diffsql_kernels::dense::row_nth_largest(&values, dead.len(), k_aux);
        let n = cuts.len();
        let cuts = Tensor::from_vec(cuts, (n, 1), device)?;
        let keep = f_dead.detach().broadcast_ge(&cuts)?.to_dtype(DType::F32)?;
        let aux_codes = (f_dead * keep)?;
        let predicted = aux_codes.matmul(self.w_dec.as_tensor())?;
        let l2 = (residual - predicted)?.sqr()?.sum(1)?.mean(0)?;
        let denom = residual
            .broadcast_sub(&residual.mean_keepdim(0)?)?
            .sqr()?
            .sum(1)?
            .mean(0)?;
        let denom_value = denom.to_scalar::<f32>()?;
        if denom_value.is_nan() || denom_value <= 0.0 {
            return Ok(l2.zeros_like()?);
        }
        Ok(l2.broadcast_div(&denom)?)
    }

    /// Keeps decoder rows at unit norm (SAE): removes the gradient component along each row.
    pub fn project_decoder_gradient(&self, grads: &mut candle_core::backprop::GradStore) -> Result<()> {
        if !self.spec.sae {
            return Ok(());
        }
        let w = self.w_dec.as_tensor();
        if let Some(g) = grads.get(w) {
            let along = (g * w)?.sum_keepdim(1)?;
            let projected = (g - w.broadcast_mul(&along)?)?;
            grads.insert(w, projected);
        }
        Ok(())
    }

    /// Renormalises decoder rows to unit norm (SAE) after a step.
    pub fn normalise_decoder(&self) -> Result<()> {
        if !self.spec.sae {
            return Ok(());
        }
        let w = self.w_dec.as_tensor();
        let norms = w.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        self.w_dec.set(&w.broadcast_div(&norms)?.detach())?;
        Ok(())
    }

    /// Moves the inference threshold towards this batch's smallest selected activation (an exponential
    /// average with factor `beta`, started at the first value).
    pub fn update_threshold(&mut self, min_selected: Option<f32>, beta: f32) {
        if let Some(v) = min_selected {
            self.threshold = if self.threshold < 0.0 {
                v
            } else {
                beta * self.threshold + (1.0 - beta) * v
            };
        }
    }
}

/// The value of the `n`-th largest positive entry of `scaled`, or None when at most `n` entries are
/// positive (then every positive entry is selected).
fn batch_top_k_cut(scaled: &Tensor, n: usize) -> Result<Option<f32>> {
    if n == 0 {
        bail!("BatchTopK: k must be at least 1");
    }
    let values: Vec<f32> = scaled.flatten_all()?.to_vec1::<f32>()?;
    Ok(diffsql_kernels::dense::nth_largest_positive(&values, n))
}

/// Adam (no weight decay), with its moments as tensors so that checkpoints can hold them.
pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Steps taken.
    pub t: u64,
    pub first: Vec<Tensor>,
    pub second: Vec<Tensor>,
}

impl Adam {
    /// Zero moments for `vars`.
    pub fn new(vars: &[&Var]) -> Result<Self> {
        let zeros = |v: &&Var| v.as_tensor().zeros_like();
        Ok(Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            first: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            second: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
        })
    }

    /// One update of every var with a gradient, at learning rate `lr`.
    pub fn step(&mut self, vars: &[&Var], grads: &candle_core::backprop::GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let c1 = 1.0 - self.beta1.powi(self.t as i32);
        let c2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, var) in vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let m = ((&self.first[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.second[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((&v / c2)?.sqrt()? + self.eps)?;
            let update = ((&m / c1)? / denom)?;
            var.set(&(var.as_tensor() - (update * lr)?)?.detach())?;
            // Detached: a moment that kept its op graph would keep every earlier step's graph alive.
            self.first[i] = m.detach();
            self.second[i] = v.detach();
        }
        Ok(())
    }
}

/// Row-major values of a tensor as f32 on the host.
pub fn host_values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}
