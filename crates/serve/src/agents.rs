//! Agent runs (`pipeline.mode=evaluation`): the list of evaluations under `results/<model>/<organism>/agent/`,
//! and a page per evaluation showing one run's transcript turn by turn with its description and grades.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::response::Html;
use serde::{Deserialize, Serialize};

use super::catalog::subdirectories;
use super::page::{ser, PageError, PageResult};
use super::state::AppState;

/// The folder, under an organism's results, that holds its agent runs (not a method).
pub const AGENT_DIR: &str = "agent";

/// One evaluation: an organism's agents on one method's results.
#[derive(Debug, Clone, Serialize)]
pub struct AgentEntry {
    pub model: String,
    pub organism: String,
    pub method: String,
    pub agent_model: String,
    pub grader: String,
    /// Per budget: model interactions, the mean score and the runs' scores.
    pub budgets: Vec<(u64, f64, Vec<f64>)>,
}

fn read_entry(dir: &Path, model: &str, organism: &str, method: &str) -> Option<AgentEntry> {
    let text = std::fs::read_to_string(dir.join("summary.json")).ok()?;
    let s: serde_json::Value = serde_json::from_str(&text).ok()?;
    let budgets = s["scores"]
        .as_array()?
        .iter()
        .map(|b| {
            let scores = b["scores"]
                .as_array()
                .map_or_else(Vec::new, |a| a.iter().filter_map(|v| v.as_f64()).collect());
            (
                b["model_interactions"].as_u64().unwrap_or(0),
                b["mean"].as_f64().unwrap_or(0.0),
                scores,
            )
        })
        .collect();
    Some(AgentEntry {
        model: model.into(),
        organism: organism.into(),
        method: method.into(),
        agent_model: s["agent_model"].as_str().unwrap_or("").into(),
        grader: s["grader"].as_str().unwrap_or("").into(),
        budgets,
    })
}

/// Every evaluation under `results_dir` with a summary.
pub fn scan(results_dir: &Path) -> Vec<AgentEntry> {
    let mut out = Vec::new();
    for model in subdirectories(results_dir) {
        for organism in subdirectories(&results_dir.join(&model)) {
            let dir = results_dir.join(&model).join(&organism).join(AGENT_DIR);
            for method in subdirectories(&dir) {
                out.extend(read_entry(&dir.join(&method), &model, &organism, &method));
            }
        }
    }
    out
}

#[derive(Debug, Deserialize, Default)]
pub struct RunQuery {
    budget: Option<u64>,
    run: Option<usize>,
}

/// `GET /agent/{model}/{organism}/{method}`: the runs, and one run (`?budget=N&run=K`, the first by default).
pub async fn page(
    State(state): State<Arc<AppState>>,
    UrlPath((model, organism, method)): UrlPath<(String, String, String)>,
    Query(q): Query<RunQuery>,
) -> PageResult {
    let entries = scan(&state.results_dir);
    let Some(entry) = entries
        .iter()
        .find(|e| e.model == model && e.organism == organism && e.method == method)
    else {
        let known: Vec<String> = entries
            .iter()
            .map(|e| format!("{}/{}/{}", e.model, e.organism, e.method))
            .collect();
        return Err(PageError::not_found(format!(
            "no agent runs of {model}/{organism} on {method} (there are: {}); run `diffsql run pipeline.mode=evaluation organism={organism} diffing/method={method}`",
            if known.is_empty() { "none".into() } else { known.join(", ") }
        )));
    };
    let budget = q.budget.or_else(|| entry.budgets.first().map(|b| b.0)).unwrap_or(0);
    let run = q.run.unwrap_or(0);
    let path = state
        .results_dir
        .join(&model)
        .join(&organism)
        .join(AGENT_DIR)
        .join(&method)
        .join(format!("i{budget}"))
        .join(format!("run_{run}.json"));
    let record: serde_json::Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| {
            PageError::not_found(format!(
                "no run {run} with budget {budget} ({} is missing)",
                path.display()
            ))
        })?;
    let html = state.render(
        "agent.html",
        minijinja::context! {
            title => format!("Agent · {organism} · {method}"),
            entry => ser(entry),
            budget,
            run,
            record => ser(&record),
        },
    )?;
    Ok(Html(html))
}
