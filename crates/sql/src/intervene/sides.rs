//! The models the intervention functions (and `logit_lens`) run, by side: `base` or an organism of the default
//! model, or `MODEL/base`, `MODEL/ORGANISM`; each loaded once per session.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use diffsql_core::config::{parse_all, ConfigDir};
use diffsql_model::LoadedModel;

/// The models the functions of one session have loaded, by side.
pub struct Sides {
    configs: ConfigDir,
    models: Mutex<HashMap<String, Arc<LoadedModel>>>,
}

impl fmt::Debug for Sides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sides").field("configs", &self.configs).finish()
    }
}

impl Sides {
    pub fn new(configs: ConfigDir) -> Self {
        Self {
            configs,
            models: Mutex::new(HashMap::new()),
        }
    }

    /// The model of `side` (`base`, an organism, `MODEL/base` or `MODEL/ORGANISM`), loaded on first use.
    pub fn get(&self, side: &str) -> anyhow::Result<Arc<LoadedModel>> {
        if let Some(m) = self.models.lock().unwrap_or_else(PoisonError::into_inner).get(side) {
            return Ok(Arc::clone(m));
        }
        let (model, organism) = match side.split_once('/') {
            Some((m, o)) => (Some(m), o),
            None => (None, side),
        };
        let mut args = Vec::new();
        if let Some(m) = model {
            args.push(format!("model={m}"));
        }
        if organism != "base" {
            args.push(format!("organism={organism}"));
        }
        let settings = self.configs.resolve(&parse_all(&args, false)?)?;
        let root = self.configs.project_root();
        let device = candle_core::Device::Cpu;
        let loaded = if organism == "base" {
            let source = diffsql_model::pair::model_source(&settings.model, &root)?;
            diffsql_model::load::load(
                &source,
                None,
                diffsql_model::pair::compute_dtype(settings.model.dtype),
                &device,
            )?
        } else {
            diffsql_model::pair::PairFiles::open(&settings, &root)?.load_organism(&settings, &device)?
        };
        let loaded = Arc::new(loaded);
        self.models
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(side.to_string(), Arc::clone(&loaded));
        Ok(loaded)
    }
}
