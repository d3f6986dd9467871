//! The sparse CPU trainer: BatchTopK steps computed by `diffsql-kernels` on host buffers (parameters and Adam
//! moments), synchronised with the candle [`SparseCoder`] and [`Adam`] for checkpoints, evaluation and
//! saving. It computes what `SparseCoder::loss` + backward + `Adam::step` compute, touching only the active
//! latents in the decoder and both gradients.

use anyhow::Result;
use candle_core::Tensor;

use super::sparse_coder::{host_values, Adam, SparseCoder, Sparsity, StepSettings, StepStats};

/// Parameters (w_enc, b_enc, w_dec, b_dec) and their Adam moments on the host. The encoder and its moments
/// are held transposed (latents × width), the layout the sparse gradient is accumulated in.
pub struct HostTrainer {
    params: [Vec<f32>; 4],
    first: [Vec<f32>; 4],
    second: [Vec<f32>; 4],
    t: u64,
    width: usize,
    latents: usize,
    workspace: diffsql_kernels::Workspace,
}

fn four(f: impl Fn(usize) -> Result<Vec<f32>>) -> Result<[Vec<f32>; 4]> {
    Ok([f(0)?, f(1)?, f(2)?, f(3)?])
}

impl HostTrainer {
    /// Whether a dictionary can be trained this way (BatchTopK on the CPU).
    pub fn applies(coder: &SparseCoder) -> bool {
        coder.spec.sparsity == Sparsity::BatchTopK && coder.w_enc.device().is_cpu()
    }

    /// Copies the weights and Adam state out of candle tensors.
    pub fn new(coder: &SparseCoder, adam: &Adam) -> Result<Self> {
        let vars = coder.vars();
        let (width, latents) = (coder.spec.width(), coder.spec.latents);
        let encoder_first = |t: &Tensor, i: usize| -> Result<Vec<f32>> {
            let v = host_values(t)?;
            Ok(if i == 0 {
                diffsql_kernels::transpose(&v, width, latents)
            } else {
                v
            })
        };
        Ok(Self {
            params: four(|i| encoder_first(vars[i].as_tensor(), i))?,
            first: four(|i| encoder_first(&adam.first[i], i))?,
            second: four(|i| encoder_first(&adam.second[i], i))?,
            t: adam.t,
            width,
            latents,
            workspace: diffsql_kernels::Workspace::default(),
        })
    }

    /// Writes the weights and Adam state back into the candle tensors.
    pub fn store(&self, coder: &SparseCoder, adam: &mut Adam) -> Result<()> {
        for (i, var) in coder.vars().iter().enumerate() {
            let shape = var.as_tensor().shape().clone();
            let device = var.device().clone();
            let layout = |v: &[f32]| -> Vec<f32> {
                if i == 0 {
                    diffsql_kernels::transpose(v, self.latents, self.width)
                } else {
                    v.to_vec()
                }
            };
            var.set(&Tensor::from_vec(layout(&self.params[i]), shape.clone(), &device)?)?;
            adam.first[i] = Tensor::from_vec(layout(&self.first[i]), shape.clone(), &device)?;
            adam.second[i] = Tensor::from_vec(layout(&self.second[i]), shape, &device)?;
        }
        adam.t = self.t;
        Ok(())
    }

    /// One training step on `x` (rows × width): loss and gradients, the SAE's decoder-gradient projection,
    /// Adam at `lr`, the SAE's decoder renormalisation.
    pub fn step(
        &mut self,
        coder: &SparseCoder,
        adam: &Adam,
        x: &[f32],
        settings: &StepSettings,
        lr: f64,
    ) -> Result<StepStats> {
        let spec = coder.spec;
        let width = spec.width();
        let out = diffsql_kernels::batch_top_k(
            &diffsql_kernels::Step {
                x,
                rows: x.len() / width,
                width,
                latents: spec.latents,
                d_model: spec.d_model,
                w_enc_t: &self.params[0],
                b_enc: &self.params[1],
                w_dec: &self.params[2],
                b_dec: &self.params[3],
                sae: spec.sae,
                k: settings.k,
                k_aux: settings.k_aux,
                dead: &settings.dead,
                auxk_alpha: settings.auxk_alpha,
            },
            &mut self.workspace,
        );
        let mut grads = [out.grad_w_enc_t, out.grad_b_enc, out.grad_w_dec, out.grad_b_dec];
        if spec.sae {
            // Keep unit-norm decoder rows: remove each row's gradient component along the row.
            for (g, w) in grads[2].chunks_exact_mut(width).zip(self.params[2].chunks_exact(width)) {
                let along: f32 = g.iter().zip(w).map(|(a, b)| a * b).sum();
                g.iter_mut().zip(w).for_each(|(a, b)| *a -= along * b);
            }
        }
        self.t += 1;
        let moments = self.first.iter_mut().zip(self.second.iter_mut());
        for ((param, grad), (first, second)) in self.params.iter_mut().zip(&grads).zip(moments) {
            diffsql_kernels::adam_update(param, grad, first, second, lr, adam.beta1, adam.beta2, adam.eps, self.t);
        }
        if spec.sae {
            for row in self.params[2].chunks_exact_mut(width) {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
        Ok(StepStats {
            loss: out.loss,
            l2: out.l2,
            auxk: out.auxk,
            sparsity_loss: 0.0,
            fve: out.fve,
            l0: out.l0,
            fired: out.fired,
            min_selected: out.min_selected,
        })
    }
}
