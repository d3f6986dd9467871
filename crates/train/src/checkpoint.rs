//! Training checkpoints: the weights and Adam moments (safetensors) and the position in the data (JSON), in the
//! dictionary's staging directory, so that a killed run resumes where it stopped.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::sparse_coder::{Adam, SparseCoder};
use super::store::CurvePoint;
use diffsql_core::config::TrainConfig;

/// The training state a checkpoint holds besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CheckpointState {
    pub(super) settings: TrainConfig,
    pub(super) source_fingerprint: String,
    pub(super) step: u64,
    pub(super) epoch: u64,
    pub(super) batches_in_epoch: u64,
    pub(super) tokens: u64,
    pub(super) threshold: f32,
    pub(super) adam_t: u64,
    pub(super) tokens_since_fired: Vec<u64>,
    pub(super) curve: Vec<CurvePoint>,
    pub(super) scale: Vec<f32>,
    pub(super) seconds: f64,
}

const CHECKPOINT_TENSORS: &str = "checkpoint.safetensors";
const CHECKPOINT_STATE: &str = "checkpoint.json";

pub(super) fn save_checkpoint(dir: &Path, coder: &SparseCoder, adam: &Adam, state: &CheckpointState) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tensors = std::collections::HashMap::new();
    for (i, (name, var)) in SparseCoder::VAR_NAMES.iter().zip(coder.vars()).enumerate() {
        tensors.insert(name.to_string(), var.as_tensor().clone());
        tensors.insert(format!("adam_m.{name}"), adam.first[i].clone());
        tensors.insert(format!("adam_v.{name}"), adam.second[i].clone());
    }
    let tmp = dir.join(format!("{CHECKPOINT_TENSORS}.tmp"));
    candle_core::safetensors::save(&tensors, &tmp)?;
    // The state names the step of the tensors: the tensors go into place first, then the state.
    let state_tmp = dir.join(format!("{CHECKPOINT_STATE}.tmp"));
    fs::write(&state_tmp, serde_json::to_string(state)?)?;
    fs::remove_file(dir.join(CHECKPOINT_STATE)).ok();
    fs::rename(&tmp, dir.join(CHECKPOINT_TENSORS))?;
    fs::rename(&state_tmp, dir.join(CHECKPOINT_STATE))?;
    Ok(())
}

/// A checkpoint of this training run, if one is there and was made with the same settings and data.
pub(super) fn load_checkpoint(
    dir: &Path,
    coder: &mut SparseCoder,
    adam: &mut Adam,
    settings: &TrainConfig,
    source_fingerprint: &str,
) -> Result<Option<CheckpointState>> {
    let state_path = dir.join(CHECKPOINT_STATE);
    let Ok(text) = fs::read_to_string(&state_path) else {
        return Ok(None);
    };
    let Ok(state) = serde_json::from_str::<CheckpointState>(&text) else {
        eprintln!("train: ignoring an unreadable checkpoint in {}", dir.display());
        return Ok(None);
    };
    if state.settings != *settings || state.source_fingerprint != source_fingerprint {
        eprintln!(
            "train: ignoring the checkpoint in {}: it was made with other settings or data",
            dir.display()
        );
        return Ok(None);
    }
    let device = coder.w_enc.device().clone();
    let tensors = match candle_core::safetensors::load(dir.join(CHECKPOINT_TENSORS), &device) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("train: ignoring an unreadable checkpoint in {} ({e})", dir.display());
            return Ok(None);
        }
    };
    for (i, (name, var)) in SparseCoder::VAR_NAMES.iter().zip(coder.vars()).enumerate() {
        let get = |key: &str| {
            tensors
                .get(key)
                .cloned()
                .with_context(|| format!("checkpoint in {} lacks {key}: delete it", dir.display()))
        };
        var.set(&get(name)?)?;
        adam.first[i] = get(&format!("adam_m.{name}"))?;
        adam.second[i] = get(&format!("adam_v.{name}"))?;
    }
    adam.t = state.adam_t;
    coder.threshold = state.threshold;
    Ok(Some(state))
}
