//! The model runtime: loads base models and organisms and runs them, returning the residual stream after
//! chosen decoder layers and the logits, as transformers computes them.

pub mod arch;
pub mod coherence;
pub mod decoder;
pub mod device;
pub mod gemma2;
pub mod gemma3;
pub mod generate;
pub mod gguf;
pub mod hf_config;
pub mod intervention;
pub mod layers;
pub mod llama;
pub mod load;
pub mod lora;
pub mod qwen2;
pub mod qwen3;
pub mod special_tokens;
pub mod weights;

pub use arch::Architecture;
pub use decoder::{Decoder, DecoderSpec, ForwardOutput};
pub use device::ComputeDevice;
pub use intervention::{Edit, Intervention, KvCache, Positions};
pub use load::{load, LoadedModel, ModelFiles, ModelSource};
