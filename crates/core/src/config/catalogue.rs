//! The catalogue of base models and organisms under `configs/`, read whole: what `diffsql config list` shows,
//! what a sweep over organisms of a type expands to, and which (organism, base) pairs exist.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::overrides::Group;
use super::resolve::ConfigDir;
use super::settings::{Finetuned, ModelConfig, OrganismConfig};

/// Every model and organism config, parsed.
#[derive(Debug, Clone)]
pub struct Catalogue {
    pub models: BTreeMap<String, ModelConfig>,
    pub organisms: BTreeMap<String, OrganismConfig>,
}

/// Counts over the catalogue (what a test holds equal to the reference toolkit's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CatalogueCounts {
    pub models: usize,
    pub organisms: usize,
    /// (organism, base model) pairs with at least one checkpoint.
    pub pairs: usize,
    pub checkpoints: usize,
    pub adapters: usize,
    pub full_models: usize,
    /// Adapters in a subfolder of their repo (`org/repo/subfolder`).
    pub adapters_in_subfolders: usize,
}

impl Catalogue {
    /// Reads every file of the model and organism groups; a malformed one is an error naming it.
    pub fn read(configs: &ConfigDir) -> Result<Self> {
        let mut models = BTreeMap::new();
        for name in configs.choices(Group::Model)? {
            let table = configs.group_table(Group::Model, &name)?;
            let model: ModelConfig = parse(table).with_context(|| format!("configs/model/{name}.toml"))?;
            models.insert(name, model);
        }
        let mut organisms = BTreeMap::new();
        for name in configs.choices(Group::Organism)? {
            let table = configs.group_table(Group::Organism, &name)?;
            let organism: OrganismConfig = parse(table).with_context(|| format!("configs/organism/{name}.toml"))?;
            organisms.insert(name, organism);
        }
        Ok(Self { models, organisms })
    }

    /// Organisms by type (sorted), each list sorted by name.
    pub fn by_type(&self) -> BTreeMap<&str, Vec<&OrganismConfig>> {
        let mut out: BTreeMap<&str, Vec<&OrganismConfig>> = BTreeMap::new();
        for o in self.organisms.values() {
            out.entry(if o.kind.is_empty() { "(no type)" } else { &o.kind })
                .or_default()
                .push(o);
        }
        out
    }

    /// The organisms of `kind` (`*`: all), sorted by name; an unknown type is an error listing the types.
    pub fn organisms_of_type(&self, kind: &str) -> Result<Vec<String>> {
        let names: Vec<String> = self
            .organisms
            .values()
            .filter(|o| kind == "*" || o.kind == kind)
            .map(|o| o.name.clone())
            .collect();
        if names.is_empty() {
            let types: Vec<&str> = self.by_type().into_keys().collect();
            anyhow::bail!(
                "no organism has type `{kind}`: the types are {} (or * for all)",
                types.join(", ")
            );
        }
        Ok(names)
    }

    /// The organisms that have a checkpoint for base `model`, sorted.
    pub fn organisms_for(&self, model: &str) -> Vec<String> {
        self.organisms
            .values()
            .filter(|o| o.finetuned.contains_key(model))
            .map(|o| o.name.clone())
            .collect()
    }

    /// Whether `organism` has a checkpoint for base `model`.
    pub fn has_pair(&self, organism: &str, model: &str) -> bool {
        self.organisms
            .get(organism)
            .is_some_and(|o| o.finetuned.contains_key(model))
    }

    /// What `diffsql config list` prints: the base models, then the organisms grouped by type, each with its
    /// short description and the bases it has (with their variant counts); `model` keeps the organisms
    /// that have that base, `kind` one type.
    pub fn listing(&self, model: Option<&str>, kind: Option<&str>) -> Result<String> {
        use std::fmt::Write;
        if let Some(m) = model.filter(|m| !self.models.contains_key(*m)) {
            let names: Vec<&str> = self.models.keys().map(String::as_str).collect();
            anyhow::bail!("unknown model `{m}`: choose one of {}", names.join(", "));
        }
        if let Some(k) = kind {
            self.organisms_of_type(k)?;
        }
        let mut out = String::new();
        let c = self.counts();
        if kind.is_none() {
            let shown: Vec<_> = self
                .models
                .iter()
                .filter(|(name, _)| model.is_none_or(|m| m == *name))
                .collect();
            writeln!(out, "base models ({}):", shown.len())?;
            for (name, m) in shown {
                let n = self
                    .organisms
                    .values()
                    .filter(|o| o.finetuned.contains_key(name))
                    .count();
                let organisms = if n == 1 { "organism" } else { "organisms" };
                writeln!(out, "  {name:<30} {:<45} {n:>3} {organisms}", m.source)?;
            }
            writeln!(out)?;
        }
        writeln!(
            out,
            "organisms by type ({} organisms, {} pairs, {} checkpoints: {} adapters, {} full models):",
            c.organisms, c.pairs, c.checkpoints, c.adapters, c.full_models
        )?;
        for (t, organisms) in self.by_type() {
            let shown: Vec<_> = organisms
                .into_iter()
                .filter(|o| model.is_none_or(|m| o.finetuned.contains_key(m)))
                .filter(|o| kind.is_none_or(|k| k == "*" || o.kind == k))
                .collect();
            if shown.is_empty() {
                continue;
            }
            writeln!(out, "{t} ({})", shown.len())?;
            for o in shown {
                writeln!(out, "  {:<34} {}", o.name, o.description)?;
                let bases: Vec<String> = o
                    .finetuned
                    .iter()
                    .map(|(b, v)| match v.0.len() {
                        1 => b.clone(),
                        n => format!("{b} ({n} variants)"),
                    })
                    .collect();
                writeln!(out, "  {:<34} bases: {}", "", bases.join(", "))?;
            }
        }
        Ok(out)
    }

    pub fn counts(&self) -> CatalogueCounts {
        let mut c = CatalogueCounts {
            models: self.models.len(),
            organisms: self.organisms.len(),
            ..Default::default()
        };
        for o in self.organisms.values() {
            c.pairs += o.finetuned.len();
            for checkpoint in o.finetuned.values().flat_map(|v| v.0.values()) {
                c.checkpoints += 1;
                match checkpoint {
                    Finetuned { adapter: Some(a), .. } => {
                        c.adapters += 1;
                        c.adapters_in_subfolders += usize::from(a.matches('/').count() >= 2);
                    }
                    _ => c.full_models += 1,
                }
            }
        }
        c
    }
}

fn parse<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        anyhow::anyhow!("key `{path}`: {}", e.into_inner().message().trim())
    })
}
