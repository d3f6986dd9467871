//! Runs every `tests/slt/*.slt` file with the sqllogictest runner against [`fixtures::session`].

use std::path::PathBuf;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;
use sqllogictest::{DBOutput, DefaultColumnType};

use super::fixtures;

struct Db {
    ctx: SessionContext,
}

#[derive(Debug)]
struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Floats are shown rounded to 6 decimals, so expected values can be written in closed form.
fn cell(col: &ArrayRef, i: usize) -> String {
    if col.is_null(i) {
        return "NULL".into();
    }
    let round = |x: f64| {
        if x.is_finite() {
            let r = (x * 1e6).round() / 1e6;
            format!("{}", if r == 0.0 { 0.0 } else { r })
        } else {
            format!("{x}")
        }
    };
    match col.data_type() {
        DataType::Float64 => round(col.as_primitive::<Float64Type>().value(i)),
        DataType::Float32 => round(col.as_primitive::<Float32Type>().value(i) as f64),
        DataType::List(_) | DataType::FixedSizeList(..) | DataType::LargeList(_) => {
            let values = match col.data_type() {
                DataType::List(_) => col.as_list::<i32>().value(i),
                DataType::LargeList(_) => col.as_list::<i64>().value(i),
                _ => col.as_fixed_size_list().value(i),
            };
            let parts: Vec<String> = (0..values.len()).map(|j| cell(&values, j)).collect();
            format!("[{}]", parts.join(", "))
        }
        _ => {
            let options = FormatOptions::default();
            ArrayFormatter::try_new(col.as_ref(), &options)
                .unwrap()
                .value(i)
                .to_string()
        }
    }
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Db {
    type Error = Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Error> {
        let mut results = Vec::new();
        // `__CACHE__` in a test file stands for the session's cache directory.
        let sql = sql.replace("__CACHE__", &fixtures::caches().f32.display().to_string());
        diffsql_sql::run_statements(&self.ctx, &sql, |r| {
            results.push(r);
            Ok(())
        })
        .await
        .map_err(|e| Error(format!("{e:#}")))?;
        let Some(result) = results.pop() else {
            return Ok(DBOutput::StatementComplete(0));
        };
        if result.schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        let mut rows = Vec::new();
        for batch in &result.batches {
            for i in 0..batch.num_rows() {
                rows.push(batch.columns().iter().map(|c| cell(c, i)).collect());
            }
        }
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; result.schema.fields().len()],
            rows,
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "diffsql"
    }
}

fn slt_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_logic_tests() {
    let mut failures = Vec::new();
    for file in slt_files() {
        let mut runner = sqllogictest::Runner::new(|| async {
            Ok(Db {
                ctx: fixtures::session(),
            })
        });
        if let Err(e) = runner.run_file_async(&file).await {
            failures.push(format!("{}: {e}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
