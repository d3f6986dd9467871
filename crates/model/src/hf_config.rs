//! Reading HF `config.json` files: field-level errors, and the rotary settings that transformers 4.x
//! (`rope_theta` + `rope_scaling`) and 5.x (`rope_parameters`, possibly per layer type) spell differently.

use anyhow::{bail, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::layers::RopeScaling;

/// Parses a config, naming the offending field on error (`config.json: hidden_size: invalid type ...`).
pub fn parse<T: DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        anyhow::anyhow!("{what}: field {path}: {}", e.into_inner())
    })
}

/// Serde defaults shared by the family configs (HF's own defaults for absent fields).
pub mod defaults {
    /// `rms_norm_eps` of every supported family.
    pub fn rms_norm_eps() -> f64 {
        1e-6
    }
    /// `hidden_act` of Llama and Qwen.
    pub fn silu() -> String {
        "silu".into()
    }
    /// `hidden_activation` of Gemma.
    pub fn gelu_tanh() -> String {
        "gelu_pytorch_tanh".into()
    }
    /// Gemma's `head_dim`.
    pub fn gemma_head_dim() -> usize {
        256
    }
    /// Gemma's `query_pre_attn_scalar`.
    pub fn gemma_query_scalar() -> f64 {
        256.0
    }
    /// Gemma ties its embeddings unless told otherwise.
    pub fn yes() -> bool {
        true
    }
}

/// Rotary settings of a config, in either transformers spelling.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RopeFields {
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
}

impl RopeFields {
    /// (theta, scaling) for layers of `layer_type` (`full_attention`, `sliding_attention`), falling back to
    /// `default_theta` when the config names none.
    pub fn resolve(&self, layer_type: Option<&str>, default_theta: f64) -> Result<(f64, RopeScaling)> {
        if let Some(params) = &self.rope_parameters {
            // transformers 5: either one parameter set, or one per layer type.
            let set = match (layer_type, params.get("rope_theta").or(params.get("rope_type"))) {
                (_, Some(_)) => params,
                (Some(t), None) => params.get(t).unwrap_or(params),
                (None, None) => params.get("full_attention").unwrap_or(params),
            };
            let theta = set
                .get("rope_theta")
                .and_then(Value::as_f64)
                .or(self.rope_theta)
                .unwrap_or(default_theta);
            return Ok((theta, scaling(Some(set))?));
        }
        Ok((
            self.rope_theta.unwrap_or(default_theta),
            scaling(self.rope_scaling.as_ref())?,
        ))
    }
}

fn scaling(v: Option<&Value>) -> Result<RopeScaling> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let kind = v
        .get("rope_type")
        .or(v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| -> Result<f64> {
        v.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow::anyhow!("rope scaling {kind:?} needs a number {k}"))
    };
    Ok(match kind {
        // Qwen2.5-VL's multimodal rotary: on text every axis has the same position, the 1-D rotary.
        "default" | "mrope" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        other => bail!("unsupported rope scaling {other:?} (supported: default, linear, llama3)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_give_the_same_rope() {
        let v4: RopeFields =
            serde_json::from_str(r#"{"rope_theta": 500000.0, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}"#)
                .unwrap();
        let v5: RopeFields = serde_json::from_str(
            r#"{"rope_parameters": {"rope_type": "linear", "factor": 8.0, "rope_theta": 500000.0}}"#,
        )
        .unwrap();
        assert_eq!(v4.resolve(None, 1.0).unwrap(), v5.resolve(None, 1.0).unwrap());
        let per_type: RopeFields = serde_json::from_str(
            r#"{"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}"#,
        )
        .unwrap();
        assert_eq!(per_type.resolve(Some("sliding_attention"), 1.0).unwrap().0, 10000.0);
        assert_eq!(per_type.resolve(Some("full_attention"), 1.0).unwrap().0, 1000000.0);
    }

    #[test]
    fn wrong_field_type_names_the_field() {
        #[derive(Debug, serde::Deserialize)]
        struct C {
            #[allow(dead_code)]
            hidden_size: usize,
        }
        let err = parse::<C>(r#"{"hidden_size": "big"}"#, "config.json").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config.json: field hidden_size: invalid type"),
            "{err}"
        );
    }
}
