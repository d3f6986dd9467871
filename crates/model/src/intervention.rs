//! Incremental decoding state and residual-stream interventions: the KV cache a decoder appends to, and the
//! edits (steering, patching) applied after a layer as tokens pass.

use anyhow::Result;
use candle_core::{DType, Tensor};

/// How an intervention changes the residual stream at the positions it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// x + scale · vector (steering).
    Add,
    /// scale · vector in place of x (patching, as patchscope does).
    Replace,
}

/// Which tokens an intervention touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Positions {
    /// Every token, prompt and generated.
    All,
    /// These positions, counted from each sequence's first token (0).
    At(Vec<usize>),
}

/// A change to the residual stream after one decoder layer, applied as the tokens pass through it.
#[derive(Debug, Clone)]
pub struct Intervention {
    pub layer: usize,
    /// A vector of d_model values.
    pub vector: Vec<f32>,
    pub scale: f32,
    pub edit: Edit,
    pub positions: Positions,
}

/// Keys and values of the tokens seen so far, per layer, for incremental decoding.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    pub(crate) cached: usize,
}

impl KvCache {
    /// An empty cache for a model of `num_layers` decoder layers (`Decoder::num_layers`).
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            cached: 0,
        }
    }

    /// Tokens cached per sequence (padding included).
    pub fn len(&self) -> usize {
        self.cached
    }

    /// True before the first forward.
    pub fn is_empty(&self) -> bool {
        self.cached == 0
    }
}

/// Applies one intervention to `x` (batch, new tokens, hidden), the columns `first..` of `attention_mask`.
pub fn apply(x: &Tensor, attention_mask: &Tensor, first: usize, iv: &Intervention) -> Result<Tensor> {
    let (b, s, h) = x.dims3()?;
    let mask: Vec<Vec<u32>> = attention_mask.to_dtype(DType::U32)?.to_vec2()?;
    let mut touch = vec![0f32; b * s];
    for (r, row) in mask.iter().enumerate() {
        let mut position = row[..first].iter().filter(|m| **m != 0).count();
        for (c, m) in row[first..].iter().enumerate() {
            if *m == 0 {
                continue;
            }
            let hit = match &iv.positions {
                Positions::All => true,
                Positions::At(ps) => ps.contains(&position),
            };
            if hit {
                touch[r * s + c] = 1.0;
            }
            position += 1;
        }
    }
    if touch.iter().all(|t| *t == 0.0) {
        return Ok(x.clone());
    }
    let device = x.device();
    let touch = Tensor::from_vec(touch, (b, s, 1), device)?.to_dtype(x.dtype())?;
    let v = Tensor::from_slice(&iv.vector, (1, 1, h), device)?.to_dtype(x.dtype())?;
    let v = (v * iv.scale as f64)?;
    Ok(match iv.edit {
        Edit::Add => (x + touch.broadcast_mul(&v)?)?,
        Edit::Replace => {
            let keep = touch.affine(-1.0, 1.0)?;
            (x.broadcast_mul(&keep)? + touch.broadcast_mul(&v)?)?
        }
    })
}
