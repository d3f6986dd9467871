//! Building blocks shared by the model families: RMS norms, linear maps, rotary position tables,
//! attention masks, gated MLPs. All compute in the weights' dtype (f32 on the CPU).

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::weights::Weights;

/// RMSNorm: x / sqrt(mean(x²) + eps) · scale. Gemma's `(1 + w)` form is folded into `scale` at load.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    scale: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Loads `name.weight` of length `dim`; `offset` is 1.0 for Gemma's `(1 + w)` norms, else 0.0.
    pub fn load(w: &Weights, name: &str, dim: usize, eps: f64, offset: f64) -> Result<Self> {
        let weight = w.get(&format!("{name}.weight"), &[dim])?;
        let scale = if offset != 0.0 { (weight + offset)? } else { weight };
        Ok(Self { scale, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &self.scale,
            self.eps as f32,
        )?)
    }
}

/// A block's norm: RMSNorm (every family but one), or LayerNorm with a bias (GPT-2).
#[derive(Debug, Clone)]
pub enum Norm {
    Rms(RmsNorm),
    Layer { weight: Tensor, bias: Tensor, eps: f64 },
}

/// Which norm a family's blocks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    Rms,
    Layer,
}

impl Norm {
    /// Loads `name.weight` (and, for LayerNorm, `name.bias`) of length `dim`; `offset` as for [`RmsNorm`].
    pub fn load(w: &Weights, name: &str, dim: usize, kind: NormKind, eps: f64, offset: f64) -> Result<Self> {
        Ok(match kind {
            NormKind::Rms => Self::Rms(RmsNorm::load(w, name, dim, eps, offset)?),
            NormKind::Layer => Self::Layer {
                weight: w.get(&format!("{name}.weight"), &[dim])?,
                bias: w.get(&format!("{name}.bias"), &[dim])?,
                eps,
            },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Rms(n) => n.forward(x),
            Self::Layer { weight, bias, eps } => {
                Ok(candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, *eps as f32)?)
            }
        }
    }
}

/// A contiguous transpose of a 2-D tensor. On the CPU in f32 it copies in tiles, in parallel (candle's
/// strided copy walks the source one element at a time: 3 s for Gemma-3-270M's weights, most of its load
/// time); elsewhere candle's copy.
pub fn transposed(w: &Tensor) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if !w.device().is_cpu() || w.dtype() != DType::F32 || !w.is_contiguous() || rows * cols == 0 {
        return Ok(w.t()?.contiguous()?);
    }
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Ok(w.t()?.contiguous()?);
    };
    let start = layout.start_offset();
    let src = &cpu.as_slice::<f32>()?[start..start + rows * cols];
    let mut out = vec![0f32; rows * cols];
    // Pieces of 64 output rows (input columns) per task.
    use rayon::prelude::*;
    out.par_chunks_mut(64 * rows).enumerate().for_each(|(i, piece)| {
        diffsql_kernels::transpose_rows(src, rows, cols, i * 64, piece);
    });
    drop(storage);
    Ok(Tensor::from_vec(out, (cols, rows), w.device())?)
}

/// y = x Wᵀ (+ b). Wᵀ is stored contiguous: gemm runs about twice as fast on it as on a transposed view.
#[derive(Debug, Clone)]
pub struct Linear {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `name.weight` of shape (out, in) and, when `bias`, `name.bias`.
    pub fn load(w: &Weights, name: &str, input: usize, output: usize, bias: bool) -> Result<Self> {
        let weight = w.get(&format!("{name}.weight"), &[output, input])?;
        let bias = if bias {
            Some(w.get(&format!("{name}.bias"), &[output])?)
        } else {
            None
        };
        Ok(Self {
            weight_t: transposed(&weight)?,
            bias,
        })
    }

    /// A linear map over an existing (out, in) matrix (tied embeddings).
    pub fn from_weight(weight: &Tensor) -> Result<Self> {
        Ok(Self {
            weight_t: transposed(weight)?,
            bias: None,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, input) = x.dims3()?;
        let y = x.reshape((b * s, input))?.matmul(&self.weight_t)?;
        let y = match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        };
        Ok(y.reshape((b, s, ()))?)
    }
}

/// How rotary frequencies are scaled (HF `rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The inverse frequencies of rotary embeddings over `head_dim`, as HF computes them.
pub fn inv_freq(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f64> {
    let base: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
        .collect();
    match scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let low_wavelen = original_max_position_embeddings / low_freq_factor;
            let high_wavelen = original_max_position_embeddings / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen > low_wavelen {
                        f / factor
                    } else if wavelen < high_wavelen {
                        f
                    } else {
                        let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// cos and sin tables for the given positions: each (batch, seq, head_dim / 2).
pub fn rotary_tables(inv_freq: &[f64], positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
    let (b, s) = positions.dims2()?;
    let inv = Tensor::from_vec(
        inv_freq.iter().map(|&f| f as f32).collect::<Vec<_>>(),
        (1, inv_freq.len()),
        positions.device(),
    )?;
    let pos = positions.to_dtype(DType::F32)?.reshape((b * s, 1))?;
    let angles = pos.broadcast_mul(&inv)?.reshape((b, s, inv_freq.len()))?;
    Ok((
        angles.cos()?.to_dtype(dtype)?.contiguous()?,
        angles.sin()?.to_dtype(dtype)?.contiguous()?,
    ))
}

/// Position ids from an attention mask (1 = token, 0 = padding): each sequence counts from 0 at its first
/// token, so left and right padding both work. Padding positions get 0.
pub fn positions_from_mask(mask: &Tensor) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let m: Vec<Vec<u32>> = mask.to_dtype(DType::U32)?.to_vec2()?;
    let mut pos = Vec::with_capacity(b * s);
    for row in &m {
        let mut next = 0u32;
        for &tok in row {
            pos.push(if tok != 0 { next } else { 0 });
            next += u32::from(tok != 0);
        }
    }
    Ok(Tensor::from_vec(pos, (b, s), mask.device())?)
}

/// The additive attention mask (batch, 1, seq, seq): 0 where query i may attend key j (j ≤ i, j not
/// padding, and i − j < window when a sliding window is given), −∞ elsewhere. A query that may attend no key
/// (padding before the first token) attends itself instead, so that no softmax row is all −∞ (which would be
/// NaN, and reach real tokens through 0 · NaN); real tokens never attend padding, so their outputs do not
/// change. −∞ rather than a large finite number also keeps `exp` off libm's slow underflow path.
pub fn causal_mask(mask: &Tensor, window: Option<usize>, dtype: DType, device: &Device) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let keys: Vec<u8> = mask.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?;
    let mut out = vec![f32::NEG_INFINITY; b * s * s];
    for bi in 0..b {
        for i in 0..s {
            let lo = window.map_or(0, |w| (i + 1).saturating_sub(w));
            let row = &mut out[(bi * s + i) * s..(bi * s + i + 1) * s];
            for j in lo..=i {
                if keys[bi * s + j] != 0 {
                    row[j] = 0.0;
                }
            }
            if row[lo..=i].iter().all(|v| v.is_infinite()) {
                row[i] = 0.0;
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, 1, s, s), device)?.to_dtype(dtype)?)
}

/// Activation of a gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu` (Llama, Qwen).
    Silu,
    /// `gelu_pytorch_tanh` (Gemma).
    GeluTanh,
    /// `gelu` with the exact erf.
    Gelu,
}

impl Activation {
    /// Parses an HF `hidden_act` / `hidden_activation` name.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "silu" | "swish" => Self::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Self::GeluTanh,
            "gelu" => Self::Gelu,
            other => anyhow::bail!("unsupported activation {other:?} (supported: silu, gelu_pytorch_tanh, gelu)"),
        })
    }

    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Silu => candle_nn::ops::silu(x)?,
            Self::GeluTanh => x.gelu()?,
            Self::Gelu => x.gelu_erf()?,
        })
    }
}

/// A block's feed-forward: gated (down(act(gate(x)) · up(x)), every family but one) or plain
/// (down(act(up(x))) with biases, GPT-2).
#[derive(Debug, Clone)]
pub enum Mlp {
    Gated(GatedMlp),
    Plain { up: Linear, down: Linear, act: Activation },
}

impl Mlp {
    /// Loads `prefix.{gate,up,down}_proj` (gated) or `prefix.{up,down}_proj` with biases (plain).
    pub fn load(
        w: &Weights,
        prefix: &str,
        hidden: usize,
        intermediate: usize,
        act: Activation,
        gated: bool,
    ) -> Result<Self> {
        if gated {
            return Ok(Self::Gated(GatedMlp::load(w, prefix, hidden, intermediate, act)?));
        }
        Ok(Self::Plain {
            up: Linear::load(w, &format!("{prefix}.up_proj"), hidden, intermediate, true)?,
            down: Linear::load(w, &format!("{prefix}.down_proj"), intermediate, hidden, true)?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Gated(m) => m.forward(x),
            Self::Plain { up, down, act } => down.forward(&act.apply(&up.forward(x)?)?),
        }
    }
}

/// down(act(gate(x)) · up(x)).
#[derive(Debug, Clone)]
pub struct GatedMlp {
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
}

impl GatedMlp {
    pub fn load(w: &Weights, prefix: &str, hidden: usize, intermediate: usize, act: Activation) -> Result<Self> {
        Ok(Self {
            gate: Linear::load(w, &format!("{prefix}.gate_proj"), hidden, intermediate, false)?,
            up: Linear::load(w, &format!("{prefix}.up_proj"), hidden, intermediate, false)?,
            down: Linear::load(w, &format!("{prefix}.down_proj"), intermediate, hidden, false)?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = (self.act.apply(&self.gate.forward(x)?)? * self.up.forward(x)?)?;
        self.down.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Left padding, a sliding window of 2: allowed keys are 0, masked ones −∞, and a padding query with no
    /// allowed key attends itself.
    #[test]
    fn causal_mask_allows_past_real_keys_in_the_window() {
        let mask = Tensor::new(&[[0u32, 1, 1, 1]], &Device::Cpu).unwrap();
        let m: Vec<Vec<f32>> = causal_mask(&mask, Some(2), DType::F32, &Device::Cpu)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        let allowed: Vec<Vec<bool>> = m.iter().map(|r| r.iter().map(|&v| v == 0.0).collect()).collect();
        assert_eq!(
            allowed,
            [
                [true, false, false, false], // padding: itself only
                [false, true, false, false], // key 0 is padding
                [false, true, true, false],
                [false, false, true, true], // key 1 is outside the window
            ]
        );
        assert!(m.iter().flatten().all(|&v| v == 0.0 || v == f32::NEG_INFINITY));
    }
}
