//! Saved queries: `.sql` files under the queries directory, run by name.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The SQL files a saved query name stands for: `NAME.sql`, or every `.sql` file in the folder `NAME/`
/// in name order.
pub fn resolve(queries_dir: &Path, name: &str) -> Result<Vec<PathBuf>> {
    if name.is_empty() || name.contains("..") || name.starts_with('/') {
        bail!("invalid query name {name:?}");
    }
    let file = queries_dir.join(format!("{name}.sql"));
    if file.is_file() {
        return Ok(vec![file]);
    }
    let dir = queries_dir.join(name);
    if dir.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        if !files.is_empty() {
            return Ok(files);
        }
    }
    let known = list(queries_dir).unwrap_or_default();
    bail!(
        "no saved query {name:?} in {}; available: {}",
        queries_dir.display(),
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )
}

/// Names of the saved queries in `queries_dir`, sorted.
pub fn list(queries_dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = std::fs::read_dir(queries_dir)
        .with_context(|| format!("cannot read the queries directory {}", queries_dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.is_dir() || path.extension().is_some_and(|e| e == "sql") {
            names.push(stem.to_string());
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Reads the SQL of a saved query (all its files, in order).
pub fn read(queries_dir: &Path, name: &str) -> Result<String> {
    let mut sql = String::new();
    for file in resolve(queries_dir, name)? {
        sql.push_str(&std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?);
        sql.push('\n');
    }
    Ok(sql)
}
