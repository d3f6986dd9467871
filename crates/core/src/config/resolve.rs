//! Stage two of configuration: read `configs/`, merge the chosen group files and the key overrides into one
//! tree, and deserialise it once into [`Settings`]. Every unknown name or key is an error listing the choices.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use toml::{Table, Value as Toml};

use super::overrides::{Group, Override, Target, Value};
use super::settings::Settings;

/// The `configs/` directory of a project.
#[derive(Debug, Clone)]
pub struct ConfigDir {
    dir: PathBuf,
}

impl ConfigDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The directory relative paths in configs are resolved against (the parent of `configs/`).
    pub fn project_root(&self) -> PathBuf {
        let abs = fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        abs.parent().map(Path::to_path_buf).unwrap_or(abs)
    }

    /// The names available in a group, sorted.
    pub fn choices(&self, group: Group) -> Result<Vec<String>> {
        let dir = self.dir.join(group.name());
        let entries = fs::read_dir(&dir).with_context(|| format!("cannot read config group {}", dir.display()))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(str::to_string))?
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// The cache directory `config.toml` names (`cache_dir`), for commands that read a cache without
    /// resolving a whole run (`sql`, `check`, `synth`, `query`); `cache` when there is no `config.toml`.
    pub fn cache_dir(&self) -> Result<PathBuf> {
        let path = self.dir.join("config.toml");
        if !path.exists() {
            return Ok(PathBuf::from("cache"));
        }
        match Self::read_toml(&path)?.get("cache_dir") {
            None => Ok(PathBuf::from("cache")),
            Some(toml::Value::String(dir)) => Ok(PathBuf::from(dir)),
            Some(other) => bail!("{}: cache_dir must be a path (a string), not {other}", path.display()),
        }
    }

    /// The workers `config.toml` names (`workers`, a list of host:port), for commands that do not resolve a
    /// whole run; none when there is no `config.toml`.
    pub fn workers(&self) -> Result<Vec<String>> {
        let path = self.dir.join("config.toml");
        if !path.exists() {
            return Ok(Vec::new());
        }
        match Self::read_toml(&path)?.get("workers") {
            None => Ok(Vec::new()),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => bail!(
                        "{}: workers must be a list of host:port strings, not {other}",
                        path.display()
                    ),
                })
                .collect(),
            Some(other) => bail!(
                "{}: workers must be a list of host:port strings, not {other}",
                path.display()
            ),
        }
    }

    fn read_toml(path: &Path) -> Result<Table> {
        let text = fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), one_line(&e.to_string())))
    }

    /// The table of one group file, with the keys a run may override filled in (an organism's `variant`).
    pub fn group_table(&self, group: Group, name: &str) -> Result<Table> {
        let mut table = self.group_file(group, name)?;
        if group == Group::Organism {
            table
                .entry("variant")
                .or_insert_with(|| Toml::String(super::settings::DEFAULT_VARIANT.into()));
        }
        Ok(table)
    }

    fn group_file(&self, group: Group, name: &str) -> Result<Table> {
        let path = self.dir.join(group.name()).join(format!("{name}.toml"));
        if !path.exists() {
            let choices = self.choices(group).unwrap_or_default();
            bail!(
                "unknown {group} `{name}`: {} (files in {})",
                choose_from(name, &choices),
                self.dir.join(group.name()).display()
            );
        }
        let mut table = Self::read_toml(&path)?;
        match table.get("name") {
            None => {
                table.insert("name".into(), Toml::String(name.into()));
            }
            Some(Toml::String(n)) if n == name => {}
            Some(other) => bail!(
                "{}: name = {other} does not match the file name `{name}`",
                path.display()
            ),
        }
        Ok(table)
    }

    /// Resolves one run's settings from `config.toml`, the group files and `overrides` (single-valued).
    /// A variant chosen for a pair that has no such variant is an error here; a pair that does not exist is
    /// an error only where a checkpoint is needed ([`Settings::finetuned`]): diffing reads the cache alone.
    /// An organism's variant other than `default` is cached and reported as its own organism,
    /// `NAME.VARIANT` (`cake_bake.mix1-0p5`), so that variants never share a partition.
    pub fn resolve(&self, overrides: &[Override]) -> Result<Settings> {
        let mut settings = Self::settings(self.merged_tree(overrides)?)?;
        let has_pair = settings.organism.finetuned.contains_key(&settings.model.name);
        let variant = settings.organism.variant.clone();
        if has_pair || variant != super::settings::DEFAULT_VARIANT {
            settings.finetuned()?;
        }
        if variant != super::settings::DEFAULT_VARIANT {
            settings.organism.name = format!("{}.{variant}", settings.organism.name);
        }
        Ok(settings)
    }

    /// Typed settings from a merged tree (from [`ConfigDir::merged_tree`]).
    pub fn settings(tree: Table) -> Result<Settings> {
        let de = toml::Value::Table(tree);
        let settings: Settings = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("config key `{path}`: {}", one_line(&e.into_inner().to_string()))
        })?;
        Ok(settings)
    }

    /// The merged config as a TOML tree (what `diffsql config show` prints).
    pub fn merged_tree(&self, overrides: &[Override]) -> Result<Table> {
        let path = self.dir.join("config.toml");
        if !path.exists() {
            bail!(
                "no {} here: run diffsql from the project directory or pass --configs DIR",
                path.display()
            );
        }
        let mut tree = Self::read_toml(&path)?;
        let defaults = tree
            .get_mut("defaults")
            .and_then(Toml::as_table_mut)
            .with_context(|| format!("{}: needs a [defaults] table choosing each group", path.display()))?;
        for o in overrides {
            if let (Target::Group(g), [Value::Choice(names)]) = (&o.target, o.values.as_slice()) {
                let v = if *g == Group::Dataset {
                    Toml::Array(names.iter().map(|n| Toml::String(n.clone())).collect())
                } else {
                    Toml::String(names[0].clone())
                };
                defaults.insert(g.name().to_string(), v);
            }
        }
        let defaults = defaults.clone();
        let choice = |g: Group| -> Result<Vec<String>> {
            match defaults.get(g.name()) {
                Some(Toml::String(s)) => Ok(vec![s.clone()]),
                Some(Toml::Array(a)) if g == Group::Dataset => a
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).context("dataset names are strings"))
                    .collect(),
                _ => bail!("{}: [defaults] needs `{}`", path.display(), g.name()),
            }
        };
        tree.insert(
            "model".into(),
            Toml::Table(self.group_file(Group::Model, &choice(Group::Model)?[0])?),
        );
        let organism = choice(Group::Organism)?[0].clone();
        if organism == crate::cache::layout::BASE_ORGANISM {
            bail!(
                "`base` is the base model itself, not an organism: choose one of {}",
                self.choices(Group::Organism)?.join(", ")
            );
        }
        tree.insert(
            "organism".into(),
            Toml::Table(self.group_table(Group::Organism, &organism)?),
        );
        let mut datasets = Table::new();
        let dataset_names = choice(Group::Dataset)?;
        if dataset_names.is_empty() {
            bail!("no dataset chosen: set dataset=NAME or dataset=[a,b]");
        }
        for name in &dataset_names {
            datasets.insert(name.clone(), Toml::Table(self.group_file(Group::Dataset, name)?));
        }
        tree.insert("dataset".into(), Toml::Table(datasets));
        let method = self.group_file(Group::DiffingMethod, &choice(Group::DiffingMethod)?[0])?;
        let diffing = tree.entry("diffing").or_insert_with(|| Toml::Table(Table::new()));
        diffing
            .as_table_mut()
            .context("config.toml: `diffing` must be a table")?
            .insert("method".into(), Toml::Table(method));

        for o in overrides {
            if let (Target::Key { path, add }, [Value::Toml(v)]) = (&o.target, o.values.as_slice()) {
                set_key(&mut tree, path, v.clone(), *add).with_context(|| format!("override `{}`", o.raw))?;
            }
        }
        Ok(tree)
    }
}

/// Sets `path` in `tree`; the key must exist unless `add` (hydra's `+key=value`).
fn set_key(tree: &mut Table, path: &[String], value: Toml, add: bool) -> Result<()> {
    let (last, parents) = path.split_last().expect("paths are non-empty");
    let mut table = tree;
    for (i, seg) in parents.iter().enumerate() {
        let here = path[..i].join(".");
        if add && !table.contains_key(seg) {
            table.insert(seg.clone(), Toml::Table(Table::new()));
        }
        if !table.contains_key(seg) {
            bail!(
                "unknown config key `{}`: {}",
                path[..=i].join("."),
                keys_of(table, &here)
            );
        }
        table = match table.get_mut(seg) {
            Some(Toml::Table(t)) => t,
            _ => bail!("`{}` is a value, not a table", path[..=i].join(".")),
        };
    }
    if !add && !table.contains_key(last) {
        let here = parents.join(".");
        bail!(
            "unknown config key `{}`: {} (write +{} to add a new key)",
            path.join("."),
            keys_of(table, &here),
            path.join(".")
        );
    }
    table.insert(last.clone(), value);
    Ok(())
}

fn keys_of(table: &Table, here: &str) -> String {
    let keys: Vec<&str> = table.keys().map(String::as_str).collect();
    let place = if here.is_empty() {
        "the config".to_string()
    } else {
        format!("`{here}`")
    };
    format!("{place} has {}", keys.join(", "))
}

/// "choose one of a, b, c"; past a dozen choices, the ones that look like `name` and where to see them all.
fn choose_from(name: &str, choices: &[String]) -> String {
    const LIST_ALL: usize = 12;
    if choices.is_empty() {
        return "there are none".into();
    }
    if choices.len() <= LIST_ALL {
        return format!("choose one of {}", choices.join(", "));
    }
    let lower = name.to_lowercase();
    let stem: String = lower.chars().take(4).collect();
    let mut near: Vec<&str> = choices
        .iter()
        .map(String::as_str)
        .filter(|c| {
            let c = c.to_lowercase();
            c.contains(&lower) || lower.contains(&c) || (stem.len() >= 3 && c.contains(&stem))
        })
        .collect();
    near.truncate(LIST_ALL);
    let all = format!("{} in all: `diffsql config list` shows them", choices.len());
    if near.is_empty() {
        format!("no name is like it ({all})")
    } else {
        format!("did you mean {}? ({all})", near.join(", "))
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
