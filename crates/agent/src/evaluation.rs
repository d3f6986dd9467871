//! `pipeline.mode=evaluation`: for the configured organism and method, agents read the method's results, ask the
//! pair and query the cache, and graders score each final description against the organism's long description.
//! Every run is written whole (description, transcript, usage, grades, `score`) under
//! `results/<model>/<organism>/agent/<method>/i<interactions>/run_<k>.json`, and a `summary.json` beside them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;

use super::agent::{run, system_prompt, Budgets, Outcome, Tools};
use super::client::{Client, ClientOptions};
use super::grader::{grade_offline, grade_with_llm, Grade, DEFAULT_RUBRIC};
use super::tools::{ask_endpoint, ask_locally, result_tables, sql_query, AskOptions, SteerTool};
use diffsql_core::config::{ConfigDir, Override, Settings};
use diffsql_model::generate::Sampling;

/// One agent run as written to disk.
#[derive(Debug, Serialize)]
pub struct RunRecord {
    pub model: String,
    pub organism: String,
    pub method: String,
    pub agent_model: String,
    pub model_interactions_budget: usize,
    pub run: usize,
    /// The organism's long description: the ground truth the grades compare with.
    pub ground_truth: String,
    pub rubric: String,
    pub description: Option<String>,
    /// The mean grade (1 when the agent gave no description).
    pub score: f64,
    pub grades: Vec<Grade>,
    pub outcome: Outcome,
    pub seconds: f64,
}

/// What an evaluation wrote: per budget, the runs' scores.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationSummary {
    pub dir: PathBuf,
    pub scores: Vec<(usize, Vec<f64>)>,
}

/// The folder of an organism's agent runs on a method.
pub fn agent_dir(settings: &Settings) -> PathBuf {
    settings
        .results_dir
        .join(&settings.model.name)
        .join(&settings.organism.name)
        .join("agent")
        .join(&settings.diffing.method.name)
}

/// The method's results as the agent's first message: each result table's first rows, as CSV.
pub fn overview(settings: &Settings, rows: usize) -> Result<String> {
    let method = &settings.diffing.method.name;
    let dir = settings
        .results_dir
        .join(&settings.model.name)
        .join(&settings.organism.name)
        .join(method);
    let mut tables: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "no results of method {method} for organism {} in {}: run diffsql run pipeline.mode=diffing diffing/method={method} organism={} first",
                settings.organism.name,
                dir.display(),
                settings.organism.name
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    tables.sort();
    if tables.is_empty() {
        bail!("{} holds no result tables (.csv): rerun the method", dir.display());
    }
    let mut out = format!(
        "OVERVIEW: the results of the diffing method `{method}` ({}), comparing the base model and the finetuned \
         model on cached text. The first {rows} rows of each result table, as CSV:\n",
        settings.diffing.method.description
    );
    for table in tables {
        let text = std::fs::read_to_string(&table).with_context(|| format!("cannot read {}", table.display()))?;
        let name = table.file_stem().unwrap_or_default().to_string_lossy();
        out.push_str(&format!("\n## {name}\n"));
        for line in text.lines().take(rows + 1) {
            let line: String = line.chars().take(400).collect();
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// The rubric for organisms of `kind` (configs/diffing/grading_rubrics.toml), or the default one.
pub fn rubric(configs: &ConfigDir, kind: &str) -> Result<String> {
    let path = configs.path().join("diffing").join("grading_rubrics.toml");
    if !path.exists() {
        return Ok(DEFAULT_RUBRIC.to_string());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(table
        .get("rubrics")
        .and_then(|r| r.get(kind))
        .and_then(|r| r.as_str())
        .unwrap_or(DEFAULT_RUBRIC)
        .to_string())
}

fn is_loopback(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or(url);
    host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")
}

/// Runs the configured evaluation and writes its records.
pub fn evaluate(settings: &Settings, configs: &ConfigDir) -> Result<EvaluationSummary> {
    let e = &settings.evaluation;
    let organism = &settings.organism;
    if organism.description_long.trim().is_empty() && organism.description.trim().is_empty() {
        bail!(
            "organism {} has no description to grade against: add description_long to its config",
            organism.name
        );
    }
    let truth = if organism.description_long.trim().is_empty() {
        organism.description.clone()
    } else {
        organism.description_long.clone()
    };
    if e.budgets.model_interactions.is_empty() {
        bail!("evaluation.budgets.model_interactions is empty: give at least one budget, e.g. [50]");
    }
    let overview_text = if e.agent.overview {
        overview(settings, e.agent.overview_rows)?
    } else {
        "OVERVIEW: none: you have only the models to ask.".to_string()
    };
    let api_key = match Client::key_from_env(&e.api_key_env) {
        Ok(k) => Some(k),
        Err(_) if is_loopback(&e.base_url) => None,
        Err(err) => return Err(err),
    };
    let options = |model: &str, temperature: f64, max_tokens: usize| ClientOptions {
        base_url: e.base_url.clone(),
        api_key: api_key.clone(),
        model: model.to_string(),
        temperature,
        max_tokens,
        timeout: Duration::from_secs(e.timeout_s),
        retries: e.retries,
        backoff: Duration::from_secs(1),
    };
    let method_kind = if e.agent.overview {
        format!(
            "the results of the diffing method {} (in the first message)",
            settings.diffing.method.name
        )
    } else {
        "no analysis (a blackbox investigation)".to_string()
    };
    let rubric_text = rubric(configs, &organism.kind)?;
    let sampling = if e.ask_model.temperature > 0.0 {
        Sampling::Sample {
            temperature: e.ask_model.temperature,
            top_p: 1.0,
            seed: 0,
        }
    } else {
        Sampling::Greedy
    };
    let device = Override::set(
        "preprocessing.device",
        toml::Value::String(settings.preprocessing.device.to_string()),
    );
    let sides = Arc::new(diffsql_sql::intervene::Sides::with_overrides(
        configs.clone(),
        vec![device.clone()],
    ));
    let dir = agent_dir(settings);
    let repeats = e.agent.repeats.max(1);
    let steer_tool = if e.agent.steer {
        // The depth the cache recorded: steering reads the cached activations, and no model file is opened yet.
        let num_layers =
            diffsql_core::cache::CacheLayout::new(&settings.cache_dir).recorded_depth(&settings.model.name)?;
        Some(SteerTool::new(
            &settings.cache_dir,
            configs.clone(),
            vec![device.clone()],
            &settings.model.name,
            &organism.name,
            num_layers,
            e.ask_model.max_new_tokens,
        )?)
    } else {
        None
    };
    let mut scores = Vec::new();
    for &interactions in &e.budgets.model_interactions {
        let budgets = Budgets {
            agent_calls: e.budgets.agent_calls,
            model_interactions: interactions,
            generated_tokens: u64::try_from(e.budgets.generated_tokens).ok(),
        };
        let mut budget_scores = Vec::new();
        for k in 0..repeats {
            let started = Instant::now();
            let ask: Box<super::agent::AskModel<'_>> = match &e.ask_model.base_url {
                Some(url) => Box::new(ask_endpoint(
                    ClientOptions {
                        base_url: url.clone(),
                        ..options("base", e.ask_model.temperature, e.ask_model.max_new_tokens)
                    },
                    &organism.name,
                    e.ask_model.max_new_tokens,
                )),
                None => Box::new(ask_locally(
                    Arc::clone(&sides),
                    &settings.model.name,
                    &organism.name,
                    AskOptions {
                        max_new_tokens: e.ask_model.max_new_tokens,
                        sampling,
                    },
                )),
            };
            let query: Option<Box<super::agent::Query<'_>>> = if e.agent.sql {
                let organism_results = settings.results_dir.join(&settings.model.name).join(&organism.name);
                Some(Box::new(sql_query(
                    &settings.cache_dir,
                    vec![settings.results_dir.clone()],
                    &result_tables(&organism_results),
                )?))
            } else {
                None
            };
            let steer: Option<Box<super::agent::Steer<'_>>> = match &steer_tool {
                Some(t) => Some(Box::new(move |r: &super::tools::SteerRequest| t.steer(r))),
                None => None,
            };
            let mut tools = Tools {
                ask_model: ask,
                query,
                steer,
            };
            let mut agent = Client::new(options(&e.agent.model, e.agent.temperature, e.agent.max_tokens));
            let system = system_prompt(&method_kind, e.agent.sql, steer_tool.is_some(), &budgets);
            eprintln!(
                "agent {} on {} / {} / {}: run {} of {}, {interactions} model interactions",
                e.agent.model,
                settings.model.name,
                organism.name,
                settings.diffing.method.name,
                k + 1,
                repeats
            );
            let outcome = run(&mut agent, &system, &overview_text, &mut tools, budgets)?;
            let grades = match &outcome.description {
                None => Vec::new(),
                Some(d) if e.grader.offline => vec![grade_offline(&truth, d)],
                Some(d) => {
                    let mut grader = Client::new(options(&e.grader.model, 0.0, 10000));
                    vec![grade_with_llm(
                        &mut grader,
                        &e.grader.model,
                        &truth,
                        &rubric_text,
                        d,
                        e.grader.repeats,
                    )?]
                }
            };
            let score = grades.first().map_or(1.0, |g| g.score);
            let record = RunRecord {
                model: settings.model.name.clone(),
                organism: organism.name.clone(),
                method: settings.diffing.method.name.clone(),
                agent_model: e.agent.model.clone(),
                model_interactions_budget: interactions,
                run: k,
                ground_truth: truth.clone(),
                rubric: rubric_text.clone(),
                description: outcome.description.clone(),
                score,
                grades,
                outcome,
                seconds: started.elapsed().as_secs_f64(),
            };
            let path = dir.join(format!("i{interactions}")).join(format!("run_{k}.json"));
            write_json(&path, &serde_json::to_value(&record)?)?;
            eprintln!(
                "  ended: {}, score {score:.2} ({} agent calls, {} model interactions, {} tokens) -> {}",
                record.outcome.ended,
                record.outcome.agent_calls_used,
                record.outcome.model_interactions_used,
                record.outcome.usage.total_tokens,
                path.display()
            );
            budget_scores.push(score);
        }
        scores.push((interactions, budget_scores));
    }
    let summary = json!({
        "model": settings.model.name, "organism": organism.name, "method": settings.diffing.method.name,
        "agent_model": e.agent.model, "grader": if e.grader.offline { "offline".to_string() } else { e.grader.model.clone() },
        "scores": scores.iter().map(|(i, s)| json!({"model_interactions": i, "scores": s,
            "mean": s.iter().sum::<f64>() / s.len().max(1) as f64})).collect::<Vec<_>>(),
    });
    write_json(&dir.join("summary.json"), &summary)?;
    Ok(EvaluationSummary { dir, scores })
}

/// Writes `value` to `path` atomically (a temporary file in the same folder, then a rename).
fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let parent = path.parent().context("a results path has a folder")?;
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
