//! One decoder-only transformer that every supported family configures: which norms, biases, attention
//! windows, rotary tables and softcaps it has. Its forward returns the residual stream after each chosen
//! decoder layer (what preprocessing caches) and the final normed hidden state for the logits.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::intervention::{Intervention, KvCache};
use super::layers::{
    causal_mask, inv_freq, positions_from_mask, rotary_tables, Activation, Linear, Mlp, Norm, NormKind, RmsNorm,
    RopeScaling,
};
use super::weights::Weights;

/// Attention settings of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerAttention {
    /// Sliding window in tokens (a query sees the last `window` keys, itself included), or global.
    pub window: Option<usize>,
    /// Rotary base frequency.
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
}

/// Everything that distinguishes one family (and size) from another.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f64,
    /// 1.0 for Gemma's `(1 + w)` norms.
    pub norm_offset: f64,
    pub qkv_bias: bool,
    /// Per-head RMS norms on queries and keys (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Gemma's four norms per block (post-attention and pre/post feed-forward).
    pub sandwich_norms: bool,
    /// Multiplies q·k.
    pub attn_scale: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// Multiplies the embeddings (Gemma: √hidden).
    pub embed_scale: Option<f64>,
    pub act: Activation,
    pub tied_embeddings: bool,
    /// One entry per layer.
    pub layers: Vec<LayerAttention>,
    /// RMSNorm, or LayerNorm with biases (GPT-2).
    pub norm: NormKind,
    /// Gated MLPs without biases, or plain ones with biases (GPT-2).
    pub gated_mlp: bool,
    /// Bias on the attention's output projection (GPT-2).
    pub o_bias: bool,
    /// How tokens know their position: rotary tables per layer, or a learned table of this many positions
    /// added to the embeddings (`model.embed_positions.weight`, GPT-2).
    pub positions: Positions,
}

/// How a decoder encodes positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// Rotary embeddings of queries and keys, with each layer's [`LayerAttention`] settings.
    Rotary,
    /// A learned embedding per position, up to `max` positions.
    Learned { max: usize },
}

/// The sizes every family's config gives.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub layers: usize,
}

impl DecoderSpec {
    /// A Llama-style pre-norm decoder (Llama, Qwen2, Qwen3 start here): plain RMS norms, no biases, global
    /// attention with one rotary table at every layer, 1/√head_dim scores.
    pub fn llama_like(dims: Dims, eps: f64, act: Activation, tied_embeddings: bool, rope: (f64, RopeScaling)) -> Self {
        let (rope_theta, rope_scaling) = rope;
        Self {
            hidden: dims.hidden,
            intermediate: dims.intermediate,
            heads: dims.heads,
            kv_heads: dims.kv_heads,
            head_dim: dims.head_dim,
            vocab: dims.vocab,
            eps,
            norm_offset: 0.0,
            qkv_bias: false,
            qk_norm: false,
            sandwich_norms: false,
            attn_scale: 1.0 / (dims.head_dim as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            embed_scale: None,
            act,
            tied_embeddings,
            norm: NormKind::Rms,
            gated_mlp: true,
            o_bias: false,
            positions: Positions::Rotary,
            layers: vec![
                LayerAttention {
                    window: None,
                    rope_theta,
                    rope_scaling
                };
                dims.layers
            ],
        }
    }

    /// A Gemma-style decoder (Gemma 2 and 3 start here): (1 + w) norms, four per block, √hidden embedding
    /// scale, 1/√query_pre_attn_scalar scores, per-layer attention settings given.
    pub fn gemma_like(
        dims: Dims,
        eps: f64,
        act: Activation,
        tied_embeddings: bool,
        query_pre_attn_scalar: f64,
        layers: Vec<LayerAttention>,
    ) -> Self {
        Self {
            norm_offset: 1.0,
            sandwich_norms: true,
            attn_scale: 1.0 / query_pre_attn_scalar.sqrt(),
            embed_scale: Some((dims.hidden as f64).sqrt()),
            layers,
            ..Self::llama_like(dims, eps, act, tied_embeddings, (10000.0, RopeScaling::None))
        }
    }
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
}

#[derive(Debug)]
struct Block {
    input_norm: Norm,
    attn: Attention,
    post_attn_norm: Option<Norm>,
    pre_ffn_norm: Norm,
    mlp: Mlp,
    post_ffn_norm: Option<Norm>,
    /// Index into the rotary tables (none with learned positions).
    rope: Option<usize>,
    window: Option<usize>,
}

/// A loaded model.
#[derive(Debug)]
pub struct Decoder {
    spec: DecoderSpec,
    embed: Tensor,
    /// Learned position embeddings (max positions, hidden), for [`Positions::Learned`].
    embed_positions: Option<Tensor>,
    blocks: Vec<Block>,
    norm: Norm,
    lm_head: Linear,
    /// Distinct inverse-frequency tables.
    ropes: Vec<Vec<f64>>,
    dtype: DType,
}

/// Embeddings, rotary tables and attention masks for one forward ([`Decoder::prepare`]).
struct Prepared {
    x: Tensor,
    tables: Vec<(Tensor, Tensor)>,
    masks: Vec<(Option<usize>, Tensor)>,
}

/// What a forward pass returns.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Residual stream after each requested layer, in request order: (batch, seq, hidden).
    pub layers: Vec<Tensor>,
    /// Final hidden state after the last norm (batch, seq, hidden), when requested.
    pub final_hidden: Option<Tensor>,
}

impl Decoder {
    /// Builds the model from HF-named weights.
    pub fn load(spec: DecoderSpec, w: &Weights) -> Result<Self> {
        let (h, hd) = (spec.hidden, spec.head_dim);
        let norm = |name: &str, dim: usize| Norm::load(w, name, dim, spec.norm, spec.eps, spec.norm_offset);
        let qk_norm = |name: &str, dim: usize| RmsNorm::load(w, name, dim, spec.eps, spec.norm_offset);
        let mut ropes: Vec<Vec<f64>> = Vec::new();
        let mut blocks = Vec::with_capacity(spec.layers.len());
        for (i, la) in spec.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let rope = (spec.positions == Positions::Rotary).then(|| {
                let freqs = inv_freq(hd, la.rope_theta, &la.rope_scaling);
                match ropes.iter().position(|r| *r == freqs) {
                    Some(k) => k,
                    None => {
                        ropes.push(freqs);
                        ropes.len() - 1
                    }
                }
            });
            let attn = Attention {
                q: Linear::load(w, &format!("{p}.self_attn.q_proj"), h, spec.heads * hd, spec.qkv_bias)?,
                k: Linear::load(
                    w,
                    &format!("{p}.self_attn.k_proj"),
                    h,
                    spec.kv_heads * hd,
                    spec.qkv_bias,
                )?,
                v: Linear::load(
                    w,
                    &format!("{p}.self_attn.v_proj"),
                    h,
                    spec.kv_heads * hd,
                    spec.qkv_bias,
                )?,
                o: Linear::load(w, &format!("{p}.self_attn.o_proj"), spec.heads * hd, h, spec.o_bias)?,
                q_norm: spec
                    .qk_norm
                    .then(|| qk_norm(&format!("{p}.self_attn.q_norm"), hd))
                    .transpose()?,
                k_norm: spec
                    .qk_norm
                    .then(|| qk_norm(&format!("{p}.self_attn.k_norm"), hd))
                    .transpose()?,
            };
            let (post_attn_norm, pre_ffn_norm, post_ffn_norm) = if spec.sandwich_norms {
                (
                    Some(norm(&format!("{p}.post_attention_layernorm"), h)?),
                    norm(&format!("{p}.pre_feedforward_layernorm"), h)?,
                    Some(norm(&format!("{p}.post_feedforward_layernorm"), h)?),
                )
            } else {
                (None, norm(&format!("{p}.post_attention_layernorm"), h)?, None)
            };
            blocks.push(Block {
                input_norm: norm(&format!("{p}.input_layernorm"), h)?,
                attn,
                post_attn_norm,
                pre_ffn_norm,
                mlp: Mlp::load(w, &format!("{p}.mlp"), h, spec.intermediate, spec.act, spec.gated_mlp)?,
                post_ffn_norm,
                rope,
                window: la.window,
            });
        }
        let embed = w.get("model.embed_tokens.weight", &[spec.vocab, h])?;
        let lm_head = if spec.tied_embeddings || !w.contains("lm_head.weight") {
            Linear::from_weight(&embed)?
        } else {
            Linear::load(w, "lm_head", h, spec.vocab, false)?
        };
        let dtype = embed.dtype();
        let embed_positions = match spec.positions {
            Positions::Learned { max } => Some(w.get("model.embed_positions.weight", &[max, h])?),
            Positions::Rotary => None,
        };
        Ok(Self {
            norm: norm("model.norm", h)?,
            embed,
            embed_positions,
            blocks,
            lm_head,
            ropes,
            spec,
            dtype,
        })
    }

    /// The configuration this model was built from.
    pub fn spec(&self) -> &DecoderSpec {
        &self.spec
    }

    /// The dtype the weights are held and computed in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on (inputs must be there too).
    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    /// Runs `input_ids` (batch, seq; u32) with `attention_mask` (batch, seq; 1 = token, 0 = padding, either
    /// side), returning the residual stream after each layer in `capture` and, if `final_hidden`, the
    /// final normed hidden state.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        capture: &[usize],
        final_hidden: bool,
    ) -> Result<ForwardOutput> {
        let (b, s) = input_ids.dims2()?;
        if attention_mask.dims() != [b, s] {
            bail!(
                "attention mask has shape {:?}, input ids {:?}",
                attention_mask.dims(),
                input_ids.dims()
            );
        }
        if let Some(&bad) = capture.iter().find(|&&l| l >= self.blocks.len()) {
            bail!(
                "layer {bad} does not exist: the model has layers 0..{}",
                self.blocks.len() - 1
            );
        }
        let device = input_ids.device();
        if !device.same_device(self.device()) || !attention_mask.device().same_device(self.device()) {
            bail!(
                "input ids are on {:?} and the attention mask on {:?}, but the model is on {:?}",
                device.location(),
                attention_mask.device().location(),
                self.device().location()
            );
        }
        let Prepared { mut x, tables, masks } = self.prepare(input_ids, attention_mask, s)?;
        let last_needed = if final_hidden {
            self.blocks.len()
        } else {
            capture.iter().max().map_or(0, |m| m + 1)
        };
        let mut captured: Vec<Option<Tensor>> = vec![None; capture.len()];
        for (i, block) in self.blocks.iter().enumerate().take(last_needed) {
            let mask = &masks.iter().find(|(w, _)| *w == block.window).expect("built above").1;
            let rope = block.rope.map(|r| (&tables[r].0, &tables[r].1));
            x = self.block_forward(block, &x, mask, rope, None)?;
            for (k, &l) in capture.iter().enumerate() {
                if l == i {
                    captured[k] = Some(x.clone());
                }
            }
        }
        let final_hidden = if final_hidden {
            Some(self.norm.forward(&x)?)
        } else {
            None
        };
        Ok(ForwardOutput {
            layers: captured
                .into_iter()
                .map(|t| t.expect("every captured layer ran"))
                .collect(),
            final_hidden,
        })
    }

    /// Runs the new tokens `input_ids` (batch, new) of sequences whose whole attention mask so far, new tokens
    /// included, is `attention_mask` (batch, cached + new), attending to the keys and values in `cache` and
    /// appending theirs to it (incremental decoding). Returns the final normed hidden state of the new tokens.
    pub fn forward_cached(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_intervened(input_ids, attention_mask, cache, &[])
    }

    /// [`Self::forward_cached`] with `interventions` applied to the residual stream of the new tokens.
    pub fn forward_intervened(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
        interventions: &[Intervention],
    ) -> Result<Tensor> {
        for iv in interventions {
            if iv.layer >= self.blocks.len() {
                bail!(
                    "layer {} does not exist: the model has layers 0..{}",
                    iv.layer,
                    self.blocks.len() - 1
                );
            }
            if iv.vector.len() != self.spec.hidden {
                bail!(
                    "the intervention vector has {} values but the model's residual stream has {}",
                    iv.vector.len(),
                    self.spec.hidden
                );
            }
        }
        let (b, s) = input_ids.dims2()?;
        let (mb, total) = attention_mask.dims2()?;
        if cache.layers.len() != self.blocks.len() {
            bail!(
                "the KV cache holds {} layers but the model has {}",
                cache.layers.len(),
                self.blocks.len()
            );
        }
        if mb != b || total != cache.len() + s {
            bail!(
                "attention mask {:?} does not cover the {} cached and {s} new tokens of {b} sequences",
                attention_mask.dims(),
                cache.len()
            );
        }
        let Prepared { mut x, tables, masks } = self.prepare(input_ids, attention_mask, s)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let mask = &masks.iter().find(|(w, _)| *w == block.window).expect("built above").1;
            let rope = block.rope.map(|r| (&tables[r].0, &tables[r].1));
            x = self.block_forward(block, &x, mask, rope, Some(&mut cache.layers[i]))?;
            for iv in interventions.iter().filter(|iv| iv.layer == i) {
                x = super::intervention::apply(&x, attention_mask, total - s, iv)?;
            }
        }
        cache.cached += s;
        self.norm.forward(&x)
    }

    /// What the blocks need for the last `new` tokens of sequences with this attention mask: their
    /// embeddings, rotary tables (positions counted from each sequence's first token), and the additive
    /// masks of their queries over every key, per attention window.
    fn prepare(&self, input_ids: &Tensor, attention_mask: &Tensor, new: usize) -> Result<Prepared> {
        let (b, s) = input_ids.dims2()?;
        let total = attention_mask.dim(1)?;
        let max_id = input_ids.max_all()?.to_dtype(DType::U32)?.to_scalar::<u32>()?;
        if max_id as usize >= self.spec.vocab {
            bail!(
                "token id {max_id} is outside the vocabulary of {} tokens",
                self.spec.vocab
            );
        }
        let device = self.device().clone();
        let positions = positions_from_mask(attention_mask)?
            .narrow(1, total - new, new)?
            .contiguous()?;
        let tables: Vec<(Tensor, Tensor)> = self
            .ropes
            .iter()
            .map(|f| rotary_tables(f, &positions, self.dtype))
            .collect::<Result<_>>()?;
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        for block in &self.blocks {
            if !masks.iter().any(|(w, _)| *w == block.window) {
                let full = causal_mask(attention_mask, block.window, self.dtype, &device)?;
                let rows = if new == total {
                    full
                } else {
                    full.narrow(2, total - new, new)?.contiguous()?
                };
                masks.push((block.window, rows));
            }
        }
        let mut x = self
            .embed
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, s, self.spec.hidden))?;
        if let Some(scale) = self.spec.embed_scale {
            x = (x * scale)?;
        }
        if let Some(table) = &self.embed_positions {
            let max = table.dim(0)?;
            let last = positions.max_all()?.to_dtype(DType::I64)?.to_scalar::<i64>()?;
            if last as usize >= max {
                bail!("position {last} is past the {max} positions the model has learned: shorten the context");
            }
            let ids = positions.to_dtype(DType::U32)?.flatten_all()?;
            let learned = table.index_select(&ids, 0)?.reshape((b, s, self.spec.hidden))?;
            x = (x + learned)?;
        }
        Ok(Prepared { x, tables, masks })
    }

    /// Logits (…, vocab) from final normed hidden states, with the family's final softcap.
    /// The logit lens: a residual-stream vector (or difference) read through the final norm and the
    /// unembedding, as if it were the last layer's output. `x` is (batch, seq, hidden).
    pub fn logit_lens(&self, x: &Tensor) -> Result<Tensor> {
        self.logits(&self.norm.forward(x)?)
    }

    pub fn logits(&self, final_hidden: &Tensor) -> Result<Tensor> {
        let logits = self.lm_head.forward(final_hidden)?;
        Ok(match self.spec.final_softcap {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }

    fn block_forward(
        &self,
        block: &Block,
        x: &Tensor,
        mask: &Tensor,
        rope: Option<(&Tensor, &Tensor)>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let h = block.input_norm.forward(x)?;
        let mut h = self.attention(&block.attn, &h, mask, rope, cache)?;
        if let Some(n) = &block.post_attn_norm {
            h = n.forward(&h)?;
        }
        let x = (x + h)?;
        let mut h = block.mlp.forward(&block.pre_ffn_norm.forward(&x)?)?;
        if let Some(n) = &block.post_ffn_norm {
            h = n.forward(&h)?;
        }
        Ok((x + h)?)
    }

    /// Attention of `x`'s tokens; with a `cache`, over the cached keys and values too, and the new ones are
    /// appended to it. `mask` is (batch, 1, new tokens, all keys).
    fn attention(
        &self,
        a: &Attention,
        x: &Tensor,
        mask: &Tensor,
        rope: Option<(&Tensor, &Tensor)>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.spec.heads, self.spec.kv_heads, self.spec.head_dim);
        let heads =
            |t: Tensor, n: usize| -> Result<Tensor> { Ok(t.reshape((b, s, n, hd))?.transpose(1, 2)?.contiguous()?) };
        let mut q = heads(a.q.forward(x)?, nh)?;
        let mut k = heads(a.k.forward(x)?, nkv)?;
        let v = heads(a.v.forward(x)?, nkv)?;
        if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let (q, mut k) = match rope {
            Some((cos, sin)) => (
                candle_nn::rotary_emb::rope(&q, cos, sin)?,
                candle_nn::rotary_emb::rope(&k, cos, sin)?,
            ),
            None => (q, k),
        };
        let mut v = v;
        if let Some(cache) = cache {
            if let Some((past_k, past_v)) = cache.take() {
                k = Tensor::cat(&[&past_k, &k], 2)?.contiguous()?;
                v = Tensor::cat(&[&past_v, &v], 2)?.contiguous()?;
            }
            *cache = Some((k.clone(), v.clone()));
        }
        let keys = k.dim(2)?;
        // Grouped-query attention without copying key/value heads: the n_rep query heads that share a
        // key/value head are stacked into one (n_rep·s, hd) matrix, so each matmul is one larger gemm per
        // (batch, kv head) instead of one small gemm per (batch, query head).
        let n_rep = nh / nkv;
        let q = q.reshape((b, nkv, n_rep * s, hd))?;
        let mut scores = (q.matmul(&k.t()?)? * self.spec.attn_scale)?;
        if let Some(cap) = self.spec.attn_softcap {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let scores = scores
            .reshape((b, nkv, n_rep, s, keys))?
            .broadcast_add(&mask.unsqueeze(1)?)?
            .reshape((b, nkv, n_rep * s, keys))?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs
            .matmul(&v)?
            .reshape((b, nh, s, hd))?
            .transpose(1, 2)?
            .reshape((b, s, nh * hd))?;
        a.o.forward(&out)
    }
}
