//! Diffing methods as saved SQL: `diffing/method=NAME` runs the `.sql` files in `queries/NAME/` against the
//! cache and writes each result as Parquet and CSV under `results/<model>/<organism>/<method>/`, with a
//! `summary.json`. Parameters from the method config (`$top_n`, `$model`, `$organism`, `$side`) are bound as typed
//! literal nodes of the parsed statement, never by pasting text into the query.
//!
//! May use: `diffsql-core`, `diffsql-model` (to open the device), `diffsql-train` (dictionaries on demand),
//! `diffsql-sql` (the session). May not use: preprocessing or serving.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Value as SqlValue;
use parquet::arrow::ArrowWriter;
use serde::Serialize;

pub mod plots;
pub mod report;

use diffsql_core::cache::writer::write_atomic;
use diffsql_core::config::{ConfigDir, Settings};
use diffsql_sql::output::stringify_nested;
use diffsql_sql::queries::{bind_statements, defines, sql_files};
use diffsql_sql::session::{execute_statement, StatementResult};

/// One result table a method wrote.
#[derive(Debug, Clone, Serialize)]
pub struct TableResult {
    pub name: String,
    pub rows: usize,
    /// Time the query took.
    pub seconds: f64,
    pub columns: Vec<String>,
    pub parquet: String,
    pub csv: String,
}

/// What a method run wrote.
#[derive(Debug, Clone, Serialize)]
pub struct MethodResult {
    pub model: String,
    pub organism: String,
    pub method: String,
    pub description: String,
    pub params: serde_json::Value,
    pub tables: Vec<TableResult>,
    pub plots: Vec<String>,
    pub seconds: f64,
    #[serde(skip)]
    pub dir: PathBuf,
}

/// The directory a method's results go to.
pub fn results_dir(settings: &Settings) -> PathBuf {
    settings
        .results_dir
        .join(&settings.model.name)
        .join(&settings.organism.name)
        .join(&settings.diffing.method.name)
}

/// The depth of the configured model as preprocessing recorded it in the cache.
fn num_layers(settings: &Settings) -> Result<usize> {
    diffsql_core::cache::CacheLayout::new(&settings.cache_dir).recorded_depth(&settings.model.name)
}

/// The parameters every query sees, method or not: `model`, `organism`, `side` (the organism as the
/// intervention functions name it: `model/organism`) and `ignore_first_tokens` (the model config's count of
/// leading tokens per sample that statistics skip).
fn pair_params(settings: &Settings) -> Vec<(String, SqlValue)> {
    let text = |s: String| SqlValue::SingleQuotedString(s);
    vec![
        ("model".to_string(), text(settings.model.name.clone())),
        ("organism".to_string(), text(settings.organism.name.clone())),
        (
            "side".to_string(),
            text(format!("{}/{}", settings.model.name, settings.organism.name)),
        ),
        (
            "ignore_first_tokens".to_string(),
            SqlValue::Number(settings.model.ignore_first_tokens.to_string(), false),
        ),
    ]
}

/// The typed parameters a method's queries see. A parameter named `layer` that is a fraction is resolved like
/// `preprocessing.layers` (`int(f * (num_layers - 1))`) against the cached model's depth.
pub fn params(settings: &Settings) -> Result<Vec<(String, SqlValue)>> {
    let text = |s: &str| SqlValue::SingleQuotedString(s.to_string());
    let number = |n: String| SqlValue::Number(n, false);
    let mut out = pair_params(settings);
    for (k, v) in &settings.diffing.method.params {
        let value = match v {
            toml::Value::Float(f) if k == "layer" || k.ends_with("_layer") => {
                let layers = diffsql_core::config::resolve_layers(
                    &[diffsql_core::config::LayerSpec::Fraction(*f)],
                    num_layers(settings)?,
                )?;
                number(layers[0].to_string())
            }
            toml::Value::String(s) => text(s),
            toml::Value::Integer(i) => number(i.to_string()),
            // Debug formatting keeps the decimal point (1.0, not 1), so the literal stays a float.
            toml::Value::Float(f) => number(format!("{f:?}")),
            toml::Value::Boolean(b) => SqlValue::Boolean(*b),
            other => {
                bail!("diffing.method.params.{k} = {other} is not a string, number or boolean: queries take scalars")
            }
        };
        out.push((k.clone(), value));
    }
    Ok(out)
}

/// The parameters of the configured method's queries: [`params`] and, for a method that trains a dictionary
/// (when `train` is set), its id and layer, training it first unless it is in the cache.
fn method_params(settings: &Settings, train: bool) -> Result<Vec<(String, SqlValue)>> {
    let mut params = params(settings)?;
    if let Some(config) = settings.diffing.method.train.as_ref().filter(|_| train) {
        let dictionary = train_dictionary(settings, config)?;
        params.retain(|(k, _)| k != "dictionary" && k != "layer");
        params.push((
            "dictionary".into(),
            SqlValue::SingleQuotedString(dictionary.id.to_string()),
        ));
        params.push(("layer".into(), SqlValue::Number(dictionary.layer.to_string(), false)));
    }
    Ok(params)
}

/// The parameters a saved query sees outside a method run (from Python's `ctx.query`): `model`, `organism` and
/// `side` from the settings `overrides` resolve to and, for a query of a method's folder (`kl/03_top_tokens`,
/// `adl`), that method's parameters, its dictionary trained (or the trained one found) unless `given` names
/// `dictionary`.
pub fn saved_query_params(
    configs: &ConfigDir,
    name: &str,
    overrides: &[String],
    given: &[&str],
) -> Result<Vec<(String, SqlValue)>> {
    let method = name.split('/').next().unwrap_or(name);
    let of_method = configs
        .choices(diffsql_core::config::Group::DiffingMethod)?
        .iter()
        .any(|m| m == method);
    let mut args = overrides.to_vec();
    if of_method && !args.iter().any(|a| a.starts_with("diffing/method=")) {
        args.push(format!("diffing/method={method}"));
    }
    let settings = configs.resolve(&diffsql_core::config::parse_all(&args, false)?)?;
    if !of_method {
        return Ok(pair_params(&settings));
    }
    method_params(&settings, !given.contains(&"dictionary"))
}

/// Runs `sql` (several statements) with `params` bound; returns the last statement's result, or None when
/// the last statement defines a table or view (a setup file whose result is not written).
pub async fn run_with_params(
    ctx: &SessionContext,
    sql: &str,
    params: &[(String, SqlValue)],
) -> Result<Option<(SchemaRef, Vec<RecordBatch>)>> {
    let mut last = None;
    for statement in bind_statements(sql, params)? {
        let definition = defines(&statement).is_some();
        let StatementResult { schema, batches } = execute_statement(ctx, statement).await?;
        last = (!definition).then_some((schema, batches));
    }
    Ok(last)
}

/// Runs the configured method and writes its results.
pub async fn run(settings: &Settings, queries_dir: &Path, configs: &ConfigDir) -> Result<MethodResult> {
    let started = Instant::now();
    let method = &settings.diffing.method;
    let folder = queries_dir.join(&method.name);
    if !folder.is_dir() {
        bail!(
            "method {} has no query folder {}: add .sql files there",
            method.name,
            folder.display()
        );
    }
    let files = sql_files(&folder)?;
    if files.is_empty() {
        bail!("method {}: {} holds no .sql files", method.name, folder.display());
    }
    // A method's SQL reads the cache and writes nothing itself: its results are written by diffsql.
    let access = diffsql_sql::SqlAccess {
        read_only: true,
        protected: vec![settings.results_dir.clone()],
    };
    check_required_tables(settings)?;
    let params = method_params(settings, true)?;
    let ctx = diffsql_sql::open_session_with(&settings.cache_dir, access)?;
    // The functions load models where the run computes (`preprocessing.device`).
    let device = diffsql_core::config::Override::set(
        "preprocessing.device",
        toml::Value::String(settings.preprocessing.device.to_string()),
    );
    diffsql_sql::register_model_functions_with(&ctx, configs.clone(), vec![device]);
    let out_dir = results_dir(settings);
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut tables = Vec::new();
    let mut results = std::collections::HashMap::new();
    for file in &files {
        let sql = fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let query_started = Instant::now();
        let result = run_with_params(&ctx, &sql, &params)
            .await
            .with_context(|| format!("method {}: {}", method.name, file.display()))?;
        let Some((schema, batches)) = result else {
            continue; // a setup file: it defined a table or view for the next ones
        };
        let name = table_name(file);
        let mut table = write_table(&out_dir, &name, &schema, &batches)?;
        table.seconds = query_started.elapsed().as_secs_f64();
        tables.push(table);
        results.insert(name, batches);
    }
    let mut plots = Vec::new();
    for spec in &method.plots {
        let batches = results.get(&spec.table).with_context(|| {
            format!(
                "method {}: plot {:?} reads table {} but the queries made {}",
                method.name,
                spec.title,
                spec.table,
                tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
            )
        })?;
        plots.push(plots::draw(spec, batches, &out_dir).with_context(|| format!("method {}", method.name))?);
    }
    let result = MethodResult {
        model: settings.model.name.clone(),
        organism: settings.organism.name.clone(),
        method: method.name.clone(),
        description: method.description.clone(),
        params: serde_json::to_value(&method.params)?,
        tables,
        plots,
        seconds: started.elapsed().as_secs_f64(),
        dir: out_dir,
    };
    write_summary(&result)?;
    Ok(result)
}

/// Every table the method `requires` holds a complete partition of this model and organism.
fn check_required_tables(settings: &Settings) -> Result<()> {
    use diffsql_core::cache::layout::Table;
    let layout = diffsql_core::cache::CacheLayout::new(&settings.cache_dir);
    let (model, organism) = (&settings.model.name, &settings.organism.name);
    for name in &settings.diffing.method.requires {
        let key = match name.as_str() {
            "logit_diff" => diffsql_core::cache::PartitionKey::logit_diff(model, organism),
            "logit_diff_totals" => diffsql_core::cache::PartitionKey::logit_diff_totals(model, organism),
            other => bail!(
                "method {}: requires = [{other:?}] is not a table it can check: use logit_diff or logit_diff_totals",
                settings.diffing.method.name
            ),
        };
        if layout.manifest(&key)?.is_none() {
            let how = match key.table {
                Table::LogitDiff | Table::LogitDiffTotals => format!(
                    "run `diffsql preprocess model={model} organism={organism}` with preprocessing.diff_top_k above 0 (the default is 100)"
                ),
                _ => format!("run `diffsql preprocess model={model} organism={organism}`"),
            };
            bail!(
                "method {} reads {} but the cache {} holds none for {model} / {organism}: {how}",
                settings.diffing.method.name,
                key.table,
                settings.cache_dir.display()
            );
        }
    }
    Ok(())
}

/// Trains the method's dictionary on the cache, or finds it there already trained with the same settings.
/// The queries see it as `$dictionary` (`model/organism/name`) and its layer as `$layer`.
fn train_dictionary(
    settings: &Settings,
    train: &diffsql_core::config::TrainConfig,
) -> Result<diffsql_train::DictionaryManifest> {
    let layer = diffsql_core::config::resolve_layers(&[train.layer], num_layers(settings)?)?[0];
    let request = diffsql_train::TrainRequest {
        model: settings.model.name.clone(),
        organism: settings.organism.name.clone(),
        layer,
        config: train.clone(),
        device: diffsql_model::device::open(settings.preprocessing.device)?,
        progress: true,
        stop_after_steps: None,
    };
    let layout = diffsql_core::cache::CacheLayout::new(&settings.cache_dir);
    let outcome = diffsql_train::ensure(&layout, &request)
        .with_context(|| format!("method {}: training its dictionary", settings.diffing.method.name))?;
    match outcome {
        diffsql_train::Outcome::Existing(m) => {
            eprintln!(
                "{} {}: already trained (held-out FVE {:.3}); using it",
                m.kind.name(),
                m.id,
                m.validation.fve
            );
            Ok(m)
        }
        diffsql_train::Outcome::Trained(m) => Ok(m),
        diffsql_train::Outcome::Stopped { step } => bail!("training stopped at step {step}"),
    }
}

/// Writes `summary.json` of a method run (atomically).
pub fn write_summary(result: &MethodResult) -> Result<()> {
    let text = serde_json::to_string_pretty(result)? + "\n";
    write_atomic(&result.dir.join("summary.json"), text.as_bytes())
}

/// A result table's name: the file stem without a leading order number (`01_stats.sql` → `stats`).
fn table_name(file: &Path) -> String {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("result");
    let trimmed = stem.trim_start_matches(|c: char| c.is_ascii_digit());
    match trimmed.strip_prefix('_') {
        Some(rest) if !rest.is_empty() && trimmed.len() != stem.len() => rest.to_string(),
        _ => stem.to_string(),
    }
}

fn write_table(dir: &Path, name: &str, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<TableResult> {
    let parquet_path = dir.join(format!("{name}.parquet"));
    let mut buf = Vec::new();
    {
        let mut w = ArrowWriter::try_new(&mut buf, Arc::clone(schema), None)?;
        for b in batches {
            w.write(b)?;
        }
        w.close()?;
    }
    write_atomic(&parquet_path, &buf)?;
    let csv_path = dir.join(format!("{name}.csv"));
    let mut buf = Vec::new();
    if batches.is_empty() {
        let header: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        buf.extend_from_slice(header.join(",").as_bytes());
        buf.push(b'\n');
    } else {
        let mut w = datafusion::arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut buf);
        for b in batches {
            w.write(&stringify_nested(b, None)?)?;
        }
    }
    write_atomic(&csv_path, &buf)?;
    Ok(TableResult {
        name: name.to_string(),
        rows: batches.iter().map(|b| b.num_rows()).sum(),
        seconds: 0.0,
        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
        parquet: parquet_path.file_name().unwrap().to_string_lossy().into_owned(),
        csv: csv_path.file_name().unwrap().to_string_lossy().into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_drop_order_numbers() {
        assert_eq!(table_name(Path::new("q/01_stats.sql")), "stats");
        assert_eq!(table_name(Path::new("q/stats.sql")), "stats");
        assert_eq!(table_name(Path::new("q/2024.sql")), "2024");
        assert_eq!(table_name(Path::new("q/3d_view.sql")), "3d_view");
    }
}
