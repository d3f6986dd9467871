//! What the results folder holds: one entry per model, organism and method, read from disk on every request
//! (a method that is still running, or was interrupted, shows as such rather than breaking the page).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::page::PageError;

/// A table of a method's `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct TableSummary {
    pub name: String,
    pub rows: u64,
    pub columns: Vec<String>,
    pub parquet: Option<String>,
    pub csv: Option<String>,
}

/// A method's `summary.json`, read leniently (fields it lacks are empty).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Summary {
    pub description: String,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub tables: Vec<TableSummary>,
    pub plots: Vec<String>,
    pub seconds: f64,
}

/// One method's results for one organism.
#[derive(Debug, Clone, Serialize)]
pub struct ResultEntry {
    pub model: String,
    pub organism: String,
    pub method: String,
    /// None when `summary.json` is missing or unreadable (`problem` says which).
    pub summary: Option<Summary>,
    pub problem: Option<String>,
    /// When `summary.json` was written (UTC, to the minute).
    pub written: Option<String>,
    #[serde(skip)]
    pub dir: PathBuf,
}

/// The sub-directories of `dir` whose names are plain (no dot files, nothing that is not a directory), sorted.
pub fn subdirectories(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    out.sort();
    out
}

/// Every method result under `results_dir` (an empty list when the folder does not exist).
pub fn scan(results_dir: &Path) -> Vec<ResultEntry> {
    let mut out = Vec::new();
    for model in subdirectories(results_dir) {
        for organism in subdirectories(&results_dir.join(&model)) {
            for method in subdirectories(&results_dir.join(&model).join(&organism)) {
                // Agent runs live beside the methods (super::agents).
                if method == super::agents::AGENT_DIR {
                    continue;
                }
                out.push(read_entry(results_dir, &model, &organism, &method));
            }
        }
    }
    out
}

fn read_entry(results_dir: &Path, model: &str, organism: &str, method: &str) -> ResultEntry {
    let dir = results_dir.join(model).join(organism).join(method);
    let path = dir.join("summary.json");
    let (summary, problem, written) = match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<Summary>(&bytes) {
            Ok(s) => {
                let written = std::fs::metadata(&path).and_then(|m| m.modified()).ok().map(utc_minute);
                (Some(s), None, written)
            }
            Err(e) => (None, Some(format!("{} cannot be read: {e}", path.display())), None),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            None,
            Some(format!(
                "no summary.json yet: the method is running or was interrupted (rerun `diffsql run pipeline.mode=diffing diffing/method={method} organism={organism}`)"
            )),
            None,
        ),
        Err(e) => (None, Some(format!("{} cannot be read: {e}", path.display())), None),
    };
    ResultEntry {
        model: model.into(),
        organism: organism.into(),
        method: method.into(),
        summary,
        problem,
        written,
        dir,
    }
}

/// The entry for a page's address, or a 404 that names what exists.
pub fn find(results_dir: &Path, model: &str, organism: &str, method: &str) -> Result<ResultEntry, PageError> {
    let models = subdirectories(results_dir);
    if !models.iter().any(|m| m == model) {
        return Err(PageError::not_found(format!(
            "no results for model {model:?} in {} (there are: {})",
            results_dir.display(),
            list_or_none(&models)
        )));
    }
    let organisms = subdirectories(&results_dir.join(model));
    if !organisms.iter().any(|o| o == organism) {
        return Err(PageError::not_found(format!(
            "no results for organism {organism:?} of model {model} (there are: {}); run `diffsql run organism={organism}` to make them",
            list_or_none(&organisms)
        )));
    }
    let methods = subdirectories(&results_dir.join(model).join(organism));
    if !methods.iter().any(|m| m == method) {
        return Err(PageError::not_found(format!(
            "no results of method {method:?} for organism {organism} (there are: {}); run `diffsql run pipeline.mode=diffing diffing/method={method} organism={organism}`",
            list_or_none(&methods)
        )));
    }
    Ok(read_entry(results_dir, model, organism, method))
}

pub fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// `t` as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_minute(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_minutes_match_known_dates() {
        assert_eq!(utc_minute(SystemTime::UNIX_EPOCH), "1970-01-01 00:00 UTC");
        // 2026-11-30 14:08:00 UTC
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_047_680);
        assert_eq!(utc_minute(t), "2026-11-30 14:08 UTC");
        // 2024-02-29 23:59 UTC (a leap day)
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_251_140);
        assert_eq!(utc_minute(t), "2024-02-29 23:59 UTC");
    }

    #[test]
    fn a_method_without_summary_is_listed_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("m/caps/kl")).unwrap();
        std::fs::create_dir_all(dir.path().join("m/caps/normdiff")).unwrap();
        std::fs::write(dir.path().join("m/caps/normdiff/summary.json"), "{not json").unwrap();
        let entries = scan(dir.path());
        assert_eq!(entries.len(), 2);
        assert!(entries[0].summary.is_none());
        assert!(entries[0].problem.as_deref().unwrap().contains("no summary.json yet"));
        assert!(entries[1].problem.as_deref().unwrap().contains("cannot be read"));
        let missing = find(dir.path(), "m", "nope", "kl").unwrap_err();
        assert_eq!(missing.status, axum::http::StatusCode::NOT_FOUND);
        assert!(missing.message.contains("there are: caps"), "{}", missing.message);
        assert!(scan(&dir.path().join("absent")).is_empty());
    }
}
