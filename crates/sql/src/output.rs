//! Prints query results as an aligned table (long vectors abbreviated), CSV, or JSON.

use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// Output formats of the shell and of `diffsql sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned table; vectors longer than 8 values are abbreviated.
    #[default]
    Table,
    /// CSV with a header row; vectors in full.
    Csv,
    /// One JSON array of row objects; vectors in full.
    Json,
}

impl Format {
    /// Parses a `\format` argument.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "table" => Some(Self::Table),
            "csv" => Some(Self::Csv),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// Vectors longer than this are abbreviated in table output.
const SHOWN_VALUES: usize = 8;

/// Writes one statement's result in `format`.
pub fn write_result(out: &mut dyn Write, format: Format, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    match format {
        Format::Table => {
            let shown: Vec<RecordBatch> = batches
                .iter()
                .map(|b| stringify_nested(b, Some(SHOWN_VALUES)))
                .collect::<Result<_>>()?;
            if shown.is_empty() {
                let empty = stringify_schema(schema);
                writeln!(
                    out,
                    "{}",
                    datafusion::arrow::util::pretty::pretty_format_batches(&[RecordBatch::new_empty(empty)])?
                )?;
            } else {
                writeln!(
                    out,
                    "{}",
                    datafusion::arrow::util::pretty::pretty_format_batches(&shown)?
                )?;
            }
        }
        Format::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            if batches.is_empty() {
                writer.write(&RecordBatch::new_empty(stringify_schema(schema)))?;
            }
            for b in batches {
                writer.write(&stringify_nested(b, None)?)?;
            }
        }
        Format::Json => {
            let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut *out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            writer.write_batches(&refs)?;
            writer.finish()?;
            if batches.iter().all(|b| b.num_rows() == 0) {
                write!(out, "[]")?;
            }
            writeln!(out)?;
        }
    }
    Ok(())
}

fn is_nested(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(..)
            | DataType::Struct(_)
            | DataType::Map(..)
    )
}

fn stringify_schema(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if is_nested(f.data_type()) {
                Field::new(f.name(), DataType::Utf8, true)
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Replaces nested columns by their text (`[1.0, 2.0]`; NULL elements as `NULL`), abbreviating lists longer
/// than `limit` values: the shell's tables and CSV, and the CSV copies of method results.
pub fn stringify_nested(batch: &RecordBatch, limit: Option<usize>) -> Result<RecordBatch> {
    if !batch.schema().fields().iter().any(|f| is_nested(f.data_type())) {
        return Ok(batch.clone());
    }
    let options = FormatOptions::default().with_null("NULL");
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|col| -> Result<ArrayRef> {
            if !is_nested(col.data_type()) {
                return Ok(Arc::clone(col));
            }
            let strings: StringArray = (0..col.len())
                .map(|i| -> Result<Option<String>> {
                    if col.is_null(i) {
                        return Ok(None);
                    }
                    let value = col.slice(i, 1);
                    Ok(Some(format_list(&value, limit, &options)?))
                })
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .collect();
            Ok(Arc::new(strings))
        })
        .collect::<Result<_>>()?;
    Ok(RecordBatch::try_new(stringify_schema(&batch.schema()), columns)?)
}

fn format_list(one_row: &ArrayRef, limit: Option<usize>, options: &FormatOptions) -> Result<String> {
    let values = match one_row.data_type() {
        DataType::List(_) => one_row
            .as_any()
            .downcast_ref::<datafusion::arrow::array::ListArray>()
            .map(|l| l.value(0)),
        DataType::LargeList(_) => one_row
            .as_any()
            .downcast_ref::<datafusion::arrow::array::LargeListArray>()
            .map(|l| l.value(0)),
        DataType::FixedSizeList(..) => one_row
            .as_any()
            .downcast_ref::<datafusion::arrow::array::FixedSizeListArray>()
            .map(|l| l.value(0)),
        _ => None,
    };
    let Some(values) = values else {
        return Ok(ArrayFormatter::try_new(one_row.as_ref(), options)?.value(0).to_string());
    };
    let n = values.len();
    let shown = limit.map_or(n, |l| l.min(n));
    let formatter = ArrayFormatter::try_new(values.as_ref(), options)?;
    let mut s = String::from("[");
    for i in 0..shown {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&formatter.value(i).to_string());
    }
    if shown < n {
        s.push_str(&format!(", … ({n} values)"));
    }
    s.push(']');
    Ok(s)
}
