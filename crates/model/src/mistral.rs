//! Mistral family (Mistral 7B, Devstral, Mistral Large): Llama's block with every layer's attention limited to a
//! sliding window of the last `sliding_window` tokens (global when the config gives none).

use anyhow::Result;
use serde::Deserialize;

use super::decoder::DecoderSpec;
use super::llama;

/// HF `MistralConfig`: Llama's fields and the window.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub llama: llama::Config,
    /// Keys each query sees, itself included; `null` for global attention (Mistral 7B v0.2 on).
    #[serde(default)]
    pub sliding_window: Option<usize>,
}

impl Config {
    /// The decoder this config describes.
    pub fn spec(&self) -> Result<DecoderSpec> {
        let mut spec = self.llama.spec()?;
        for layer in &mut spec.layers {
            layer.window = self.sliding_window;
        }
        Ok(spec)
    }
}
