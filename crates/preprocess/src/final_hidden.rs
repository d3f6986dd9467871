//! Reads a cached `final_hidden` partition row by row, in the order it was written, as f32.

use anyhow::{bail, Context, Result};
use datafusion::arrow::array::{AsArray, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReader;

use diffsql_core::cache::source::{CacheFile, CachePath};
use diffsql_core::cache::vectors::VectorEncoding;
use diffsql_core::cache::writer::VECTOR_COLUMN;
use diffsql_core::cache::{CacheLayout, PartitionKey};

/// Sequential reader of one partition's vectors.
pub struct FinalHiddenReader {
    key: PartitionKey,
    files: std::vec::IntoIter<CachePath>,
    current: Option<ParquetRecordBatchReader>,
    pending: Vec<f32>,
}

impl FinalHiddenReader {
    /// Opens a complete partition.
    pub fn open(layout: &CacheLayout, key: &PartitionKey) -> Result<Self> {
        let manifest = layout
            .manifest(key)?
            .with_context(|| format!("{key} is not complete in {}", layout.location()))?;
        let files = layout.files(key, &manifest)?;
        Ok(Self {
            key: key.clone(),
            files: files.into_iter(),
            current: None,
            pending: Vec::new(),
        })
    }

    /// The next `rows` vectors of `d_model` values, row-major.
    pub fn next_rows(&mut self, rows: usize, d_model: usize) -> Result<Vec<f32>> {
        let want = rows * d_model;
        while self.pending.len() < want {
            let Some(batch) = self.next_batch()? else {
                bail!("{} ended before the tokens did: remove it and run again", self.key);
            };
            let col = batch
                .column_by_name(VECTOR_COLUMN)
                .with_context(|| format!("{} has no {VECTOR_COLUMN} column", self.key))?;
            let field = batch.schema().field_with_name(VECTOR_COLUMN)?.clone();
            let enc = VectorEncoding::from_field(&field)?;
            if enc.d_model != d_model {
                bail!(
                    "{} holds vectors of {} values, the model has d_model {d_model}",
                    self.key,
                    enc.d_model
                );
            }
            let list = enc.decode_to_f32_list(col.as_fixed_size_binary())?;
            let values = list
                .as_list::<i32>()
                .values()
                .as_primitive::<datafusion::arrow::datatypes::Float32Type>();
            self.pending.extend_from_slice(values.values());
        }
        let rest = self.pending.split_off(want);
        Ok(std::mem::replace(&mut self.pending, rest))
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if let Some(reader) = self.current.as_mut() {
                if let Some(b) = reader.next() {
                    return Ok(Some(b?));
                }
                self.current = None;
            }
            let Some(path) = self.files.next() else {
                return Ok(None);
            };
            let file = CacheFile::open(&path)?;
            self.current = Some(file.reader(None, &[VECTOR_COLUMN], 8192)?);
        }
    }
}
