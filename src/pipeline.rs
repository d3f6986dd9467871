//! The pipeline as the command line runs it: resolve the config for each run of a (multi)run, then
//! preprocess, diff, or both. In a multirun one failure does not stop the others; all are reported.

use std::path::Path;

use anyhow::{bail, Result};

use diffsql_core::config::overrides::{organism_type, Group, Override, Target, Value};
use diffsql_core::config::{expand, parse_all, Catalogue, ConfigDir, Mode, Settings};

/// Runs preprocessing for resolved settings and prints its summary.
pub fn preprocess(settings: &Settings, configs: &ConfigDir) -> Result<()> {
    let s = diffsql_preprocess::run(settings, &configs.project_root())?;
    let who = format!("{} / {}", settings.model.name, settings.organism.name);
    if s.is_noop() {
        eprintln!(
            "preprocess {who}: cache already complete in {} ({} tokens; {}); nothing to do",
            settings.cache_dir.display(),
            s.tokens,
            s.tokenizer
        );
    } else {
        eprintln!(
            "preprocess {who}: {} tokens, {} partitions, {} rows, {} in {:.1} s ({:.0} tokens/s){}",
            s.tokens,
            s.partitions_written,
            s.rows_written,
            indicatif::HumanBytes(s.bytes_written),
            s.seconds,
            s.tokens as f64 / s.seconds.max(1e-9),
            if s.base_reused {
                "; base model reused from the cache"
            } else {
                ""
            }
        );
        eprintln!("  tokens: {}", s.tokenizer);
        if let Some(v) = &s.vocabulary {
            eprintln!("  vocabulary: {v}");
        }
        eprintln!("  stages: {}", s.stages);
    }
    Ok(())
}

/// Runs the configured diffing method and prints where its results went.
pub fn diff(settings: &Settings, queries: &Path, configs: &ConfigDir) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let r = runtime.block_on(diffsql_diffing::run(settings, queries, configs))?;
    eprintln!(
        "diffing {} / {} / {}: {} tables, {} plots in {} ({:.2} s)",
        r.model,
        r.organism,
        r.method,
        r.tables.len(),
        r.plots.len(),
        r.dir.display(),
        r.seconds
    );
    Ok(())
}

/// Runs the agentic evaluation on the method's existing results and prints the scores.
pub fn evaluate(settings: &Settings, configs: &ConfigDir) -> Result<()> {
    let s = diffsql_agent::evaluation::evaluate(settings, configs)?;
    for (interactions, scores) in &s.scores {
        let mean = scores.iter().sum::<f64>() / scores.len().max(1) as f64;
        eprintln!(
            "evaluation {} / {} / {}: {interactions} model interactions, score {mean:.2} over {} runs ({})",
            settings.model.name,
            settings.organism.name,
            settings.diffing.method.name,
            scores.len(),
            s.dir.display()
        );
    }
    Ok(())
}

/// Runs one resolved config in its mode.
/// Runs this process's sessions on `workers` (set once; the same list again is a no-op, another an error).
pub fn use_workers(workers: &[String]) -> Result<()> {
    static INSTALLED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    if let Some(installed) = INSTALLED.get() {
        if installed.as_slice() != workers {
            bail!(
                "workers={workers:?} differs from the workers this process already uses ({installed:?}): one list per command"
            );
        }
        return Ok(());
    }
    #[cfg(not(feature = "cluster"))]
    bail!("this diffsql was built without the cluster feature, so it cannot use workers={workers:?}: build it with the default features");
    #[cfg(feature = "cluster")]
    {
        diffsql_cluster::install(diffsql_cluster::workers_from(&workers.join(","))?)?;
        INSTALLED.set(workers.to_vec()).ok();
        Ok(())
    }
}

pub fn run_one(settings: &Settings, configs: &ConfigDir, queries: &Path) -> Result<()> {
    if !settings.workers.is_empty() {
        use_workers(&settings.workers)?;
    }
    if matches!(settings.pipeline.mode, Mode::Preprocessing | Mode::Full) {
        preprocess(settings, configs)?;
    }
    if matches!(settings.pipeline.mode, Mode::Diffing | Mode::Full) {
        diff(settings, queries, configs)?;
    }
    let evaluate_after = settings.pipeline.mode == Mode::Full && settings.evaluation.enabled;
    if settings.pipeline.mode == Mode::Evaluation || evaluate_after {
        evaluate(settings, configs)?;
    }
    Ok(())
}

/// Parses `args`, expands sweeps and runs each resolved config with `each`; `fixed` overrides (such as a
/// mode forced by the subcommand) apply to every run. Failures are collected and reported at the end.
pub fn multirun(
    configs: &ConfigDir,
    args: &[String],
    multirun: bool,
    fixed: &[Override],
    mut each: impl FnMut(&Settings) -> Result<()>,
) -> Result<()> {
    let parsed = parse_all(args, multirun)?;
    for f in fixed {
        if parsed.iter().any(|p| p.target == f.target) {
            if let Target::Key { path, .. } = &f.target {
                bail!("`{}` is set by this command; leave it out", path.join("."));
            }
        }
    }
    let catalogue = sweeps_organisms(&parsed)
        .then(|| Catalogue::read(configs))
        .transpose()?;
    let parsed = match &catalogue {
        Some(c) => expand_organism_types(parsed, c)?,
        None => parsed,
    };
    if !multirun && parsed.iter().any(|o| o.values.len() > 1) {
        bail!("an organism type stands for several organisms: add --multirun to run each");
    }
    let mut runs = expand(&parsed);
    // A sweep over organisms (or over models and organisms) runs the pairs the catalogue has.
    let mut skipped = Vec::new();
    if let Some(c) = catalogue.as_ref().filter(|_| runs.len() > 1) {
        let defaults = configs.resolve(fixed)?;
        runs.retain(|run| {
            let chosen = |g: Group, default: &str| {
                run.iter()
                    .find(|o| o.target == Target::Group(g))
                    .and_then(|o| match &o.values[0] {
                        Value::Choice(names) => names.first().cloned(),
                        Value::Toml(_) => None,
                    })
                    .unwrap_or_else(|| default.to_string())
            };
            let organism = chosen(Group::Organism, &defaults.defaults.organism);
            let model = chosen(Group::Model, &defaults.model.name);
            let exists = !c.organisms.contains_key(&organism) || c.has_pair(&organism, &model);
            if !exists {
                skipped.push(format!("{organism} on {model}"));
            }
            exists
        });
        if !skipped.is_empty() {
            eprintln!(
                "skipping {} pairs the catalogue does not have: {}",
                skipped.len(),
                skipped.join(", ")
            );
        }
        if runs.is_empty() {
            bail!("none of the chosen organisms has a checkpoint for the chosen models (`diffsql config list` shows the pairs)");
        }
    }
    let mut failures = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let label = run.iter().map(|o| o.raw.as_str()).collect::<Vec<_>>().join(" ");
        if runs.len() > 1 {
            eprintln!(
                "[{}/{}] {}",
                i + 1,
                runs.len(),
                if label.is_empty() { "(defaults)" } else { &label }
            );
        }
        let mut all = run.clone();
        all.extend(fixed.iter().cloned());
        let outcome = configs.resolve(&all).and_then(|s| each(&s));
        if let Err(e) = outcome {
            if runs.len() == 1 {
                return Err(e);
            }
            eprintln!("[{}/{}] failed: {}", i + 1, runs.len(), diffsql_model::one_line(&e));
            failures.push((label, e));
        }
    }
    if !failures.is_empty() {
        for (label, e) in &failures {
            eprintln!("failed: {label}: {}", diffsql_model::one_line(e));
        }
        bail!("{} of {} runs failed", failures.len(), runs.len());
    }
    if runs.len() > 1 {
        eprintln!("all {} runs succeeded", runs.len());
    }
    Ok(())
}

/// Whether any override chooses organisms (a sweep or a type), so the catalogue is read.
fn sweeps_organisms(parsed: &[Override]) -> bool {
    parsed.iter().any(|o| {
        o.target == Target::Group(Group::Organism)
            && (o.values.len() > 1
                || o.values
                    .iter()
                    .any(|v| matches!(v, Value::Choice(c) if organism_type(c).is_some())))
    })
}

/// Replaces each `organism=type:KIND` value by the organisms of that type, in name order, without repeats.
fn expand_organism_types(parsed: Vec<Override>, catalogue: &Catalogue) -> Result<Vec<Override>> {
    parsed
        .into_iter()
        .map(|mut o| {
            if o.target != Target::Group(Group::Organism) {
                return Ok(o);
            }
            let mut values: Vec<Value> = Vec::new();
            for v in o.values {
                let names = match &v {
                    Value::Choice(c) => match organism_type(c) {
                        Some(kind) => catalogue.organisms_of_type(kind)?,
                        None => c.clone(),
                    },
                    Value::Toml(t) => bail!("organism={t} is not an organism name"),
                };
                for name in names {
                    let value = Value::Choice(vec![name]);
                    if !values.contains(&value) {
                        values.push(value);
                    }
                }
            }
            o.values = values;
            Ok(o)
        })
        .collect()
}
