//! The models the intervention functions (and `logit_lens`) run, by side: `base` or an organism of the default
//! model, or `MODEL/base`, `MODEL/ORGANISM` (an organism's variant as `ORGANISM.VARIANT`, as the cache names it);
//! each loaded once per session, on the device the config names (`preprocessing.device`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use diffsql_core::config::overrides::{Group, Target};
use diffsql_core::config::{parse_all, ConfigDir, Override};
use diffsql_model::LoadedModel;

/// The models the functions of one session have loaded, by side.
pub struct Sides {
    configs: ConfigDir,
    /// Applied to every side's config (the run's device, dtype, sources), except the model and organism
    /// choices, which the side makes.
    overrides: Vec<Override>,
    models: Mutex<HashMap<String, Arc<LoadedModel>>>,
}

impl fmt::Debug for Sides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sides").field("configs", &self.configs).finish()
    }
}

impl Sides {
    pub fn new(configs: ConfigDir) -> Self {
        Self::with_overrides(configs, Vec::new())
    }

    /// Sides whose configs are resolved with `overrides` too (a run's or a server's: `preprocessing.device=cuda`).
    pub fn with_overrides(configs: ConfigDir, overrides: Vec<Override>) -> Self {
        let side_chooses = |o: &Override| {
            matches!(o.target, Target::Group(Group::Model | Group::Organism)) || o.key() == "organism.variant"
        };
        Self {
            configs,
            overrides: overrides.into_iter().filter(|o| !side_chooses(o)).collect(),
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
            // `cake_bake.mix1-0p5`: an organism's variant, as preprocessing names its cache.
            let known = self.configs.choices(Group::Organism).unwrap_or_default();
            match organism
                .split_once('.')
                .filter(|_| !known.iter().any(|k| k == organism))
            {
                Some((name, variant)) => {
                    args.push(format!("organism={name}"));
                    args.push(format!("organism.variant={variant}"));
                }
                None => args.push(format!("organism={organism}")),
            }
        }
        let mut overrides = self.overrides.clone();
        overrides.extend(parse_all(&args, false)?);
        let settings = self.configs.resolve(&overrides)?;
        let root = self.configs.project_root();
        let device = diffsql_model::device::open(settings.preprocessing.device)?;
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
