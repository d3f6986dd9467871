//! Saved queries: `.sql` files under the queries directory, run by name, with `$name` parameters bound.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Value as SqlValue;
use datafusion::sql::sqlparser::dialect::GenericDialect;

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
        let files = sql_files(&dir)?;
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

/// The `.sql` files of a folder, in name order (the order a method or a saved query runs them in).
pub fn sql_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the query folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    Ok(files)
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

/// Replaces every `$name` placeholder in a parsed statement by its typed value, as a literal node of the
/// syntax tree (never by editing SQL text), so placeholders work everywhere, table function arguments included.
fn bind(statement: &mut DFStatement, params: &[(String, SqlValue)]) -> Result<()> {
    use datafusion::sql::sqlparser::ast::{visit_expressions_mut, Expr as SqlExpr};
    let DFStatement::Statement(statement) = statement else {
        return Ok(());
    };
    let mut unknown = None;
    let _ = visit_expressions_mut(statement.as_mut(), |e| {
        if let SqlExpr::Value(v) = e {
            if let SqlValue::Placeholder(name) = &v.value {
                let key = name.trim_start_matches('$');
                match params.iter().find(|(k, _)| k == key) {
                    Some((_, value)) => v.value = value.clone(),
                    None => unknown = Some(name.clone()),
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    if let Some(name) = unknown {
        let known: Vec<String> = params.iter().map(|(k, _)| format!("${k}")).collect();
        bail!(
            "unknown parameter {name}: the parameters given are {}",
            known.join(", ")
        );
    }
    Ok(())
}

/// The table or view a statement defines for the statements after it (a setup statement, whose result is not
/// a finding; `DROP` counts, with an empty name), or None for a statement with a result.
pub fn defines(statement: &DFStatement) -> Option<String> {
    use datafusion::sql::sqlparser::ast::Statement;
    match statement {
        DFStatement::Statement(s) => match &**s {
            Statement::CreateTable(t) => Some(t.name.to_string()),
            Statement::CreateView(v) => Some(v.name.to_string()),
            Statement::Drop { .. } => Some(String::new()),
            _ => None,
        },
        DFStatement::CreateExternalTable(t) => Some(t.name.to_string()),
        _ => None,
    }
}

/// The statements of `sql` with `params` bound: every `$name` placeholder replaced by its typed literal.
pub fn bind_statements(sql: &str, params: &[(String, SqlValue)]) -> Result<Vec<DFStatement>> {
    let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})?;
    if statements.is_empty() {
        bail!("no SQL statement");
    }
    statements
        .into_iter()
        .map(|mut s| bind(&mut s, params).map(|()| s))
        .collect()
}
