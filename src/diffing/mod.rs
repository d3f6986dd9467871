//! Diffing methods as saved SQL: `diffing/method=NAME` runs the `.sql` files in `queries/NAME/` against the
//! cache and writes each result as Parquet and CSV under `results/<model>/<organism>/<method>/`, with a
//! `summary.json`. Parameters from the method config reach the SQL as typed placeholders (`$top_n`,
//! `$model`, `$organism`), never by pasting text into the query.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use parquet::arrow::ArrowWriter;
use serde::Serialize;

use crate::config::Settings;
use crate::sql::open_session;

/// One result table a method wrote.
#[derive(Debug, Clone, Serialize)]
pub struct TableResult {
    pub name: String,
    pub rows: usize,
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

/// The typed parameters a method's queries see.
pub fn params(settings: &Settings) -> Result<Vec<(String, ScalarValue)>> {
    let mut out = vec![
        ("model".to_string(), ScalarValue::from(settings.model.name.as_str())),
        (
            "organism".to_string(),
            ScalarValue::from(settings.organism.name.as_str()),
        ),
    ];
    for (k, v) in &settings.diffing.method.params {
        let value = match v {
            toml::Value::String(s) => ScalarValue::from(s.as_str()),
            toml::Value::Integer(i) => ScalarValue::Int64(Some(*i)),
            toml::Value::Float(f) => ScalarValue::Float64(Some(*f)),
            toml::Value::Boolean(b) => ScalarValue::Boolean(Some(*b)),
            other => {
                bail!("diffing.method.params.{k} = {other} is not a string, number or boolean: queries take scalars")
            }
        };
        out.push((k.clone(), value));
    }
    Ok(out)
}

/// Runs `sql` (several statements) with `params` bound; returns the last statement's result.
pub async fn run_with_params(
    ctx: &SessionContext,
    sql: &str,
    params: &[(String, ScalarValue)],
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})?;
    if statements.is_empty() {
        bail!("no SQL statement");
    }
    let values = ParamValues::Map(params.iter().cloned().map(|(k, v)| (k, v.into())).collect());
    let mut last = None;
    for statement in statements {
        let plan = ctx.state().statement_to_plan(statement).await?;
        let plan = plan.with_param_values(values.clone())?;
        let df = ctx.execute_logical_plan(plan).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        last = Some((schema, df.collect().await?));
    }
    Ok(last.expect("at least one statement"))
}

/// Runs the configured method and writes its results.
pub async fn run(settings: &Settings, queries_dir: &Path) -> Result<MethodResult> {
    let started = Instant::now();
    let method = &settings.diffing.method;
    let folder = queries_dir.join(&method.name);
    let mut files: Vec<PathBuf> = fs::read_dir(&folder)
        .with_context(|| {
            format!(
                "method {} has no query folder {}: add .sql files there",
                method.name,
                folder.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("method {}: {} holds no .sql files", method.name, folder.display());
    }
    let ctx = open_session(&settings.cache_dir)?;
    let params = params(settings)?;
    let out_dir = results_dir(settings);
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut tables = Vec::new();
    for file in &files {
        let sql = fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let (schema, batches) = run_with_params(&ctx, &sql, &params)
            .await
            .with_context(|| format!("method {}: {}", method.name, file.display()))?;
        let name = table_name(file);
        tables.push(write_table(&out_dir, &name, &schema, &batches)?);
    }
    let result = MethodResult {
        model: settings.model.name.clone(),
        organism: settings.organism.name.clone(),
        method: method.name.clone(),
        description: method.description.clone(),
        params: serde_json::to_value(&method.params)?,
        tables,
        plots: Vec::new(),
        seconds: started.elapsed().as_secs_f64(),
        dir: out_dir,
    };
    write_summary(&result)?;
    Ok(result)
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

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))?;
    Ok(())
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
            w.write(&flatten_for_csv(b)?)?;
        }
    }
    write_atomic(&csv_path, &buf)?;
    Ok(TableResult {
        name: name.to_string(),
        rows: batches.iter().map(|b| b.num_rows()).sum(),
        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
        parquet: parquet_path.file_name().unwrap().to_string_lossy().into_owned(),
        csv: csv_path.file_name().unwrap().to_string_lossy().into_owned(),
    })
}

/// CSV has no lists: nested columns are written as their display text (`[1.0, 2.0]`).
fn flatten_for_csv(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
        if f.data_type().is_nested() {
            let fmt = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default())?;
            let text: StringArray = (0..col.len())
                .map(|i| col.is_valid(i).then(|| fmt.value(i).to_string()))
                .collect();
            fields.push(Field::new(f.name(), DataType::Utf8, true));
            columns.push(Arc::new(text));
        } else {
            fields.push(f.as_ref().clone());
            columns.push(Arc::clone(col));
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
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
