//! diffsql's model runtime: loads base models and organisms and runs them, returning the residual stream
//! after chosen decoder layers and the logits, as transformers computes them.
//!
//! Owns the families (one file each, a serde `Config` mirroring HF `config.json`), the decoder, weights, LoRA
//! merging, GGUF, local and hub loading, the base/organism [`pair`] loader, datasets ([`data`]), generation
//! with interventions, and the one-line error format ([`one_line`]).
//!
//! May use: `diffsql-core` (settings, hub cache), `diffsql-kernels`, candle. May not use: SQL, the cache's
//! tables, training or any job.

pub mod arch;
pub mod coherence;
pub mod data;
pub mod decoder;
pub mod device;
pub mod error;
pub mod gemma2;
pub mod gemma3;
pub mod generate;
pub mod generation;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod gpt2;
pub mod hf_config;
pub mod intervention;
pub mod layers;
pub mod llama;
pub mod load;
pub mod lora;
pub mod mistral;
pub mod pair;
pub mod qwen2;
pub mod qwen2_5_vl;
pub mod qwen3;
pub mod special_tokens;
pub mod weights;

pub use arch::Architecture;
pub use decoder::{Decoder, DecoderSpec, ForwardOutput};
pub use device::ComputeDevice;
pub use error::one_line;
pub use intervention::{Edit, Intervention, KvCache, Positions};
pub use load::{load, LoadedModel, ModelFiles, ModelSource};
