//! `cache_info()`: what a cache holds, one row per partition and per trained dictionary, read from the manifests.

use std::sync::Arc;

use datafusion::arrow::array::{Int32Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_err, DataFusionError, Result};
use datafusion::datasource::MemTable;

use diffsql_core::cache::{CacheLayout, Table};

/// The `cache_info()` table function.
#[derive(Debug)]
pub struct CacheInfo {
    layout: CacheLayout,
}

impl CacheInfo {
    /// `cache_info()` over the cache at `layout`.
    pub fn new(layout: CacheLayout) -> Self {
        Self { layout }
    }
}

impl TableFunctionImpl for CacheInfo {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        if !args.exprs().is_empty() {
            return plan_err!("cache_info() takes no arguments, got {}", args.exprs().len());
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("table_name", DataType::Utf8, false),
            Field::new("model", DataType::Utf8, false),
            Field::new("organism", DataType::Utf8, true),
            Field::new("layer", DataType::Int32, true),
            Field::new("rows", DataType::UInt64, false),
            Field::new("files", DataType::UInt64, false),
            Field::new("bytes", DataType::UInt64, false),
            Field::new("dtype", DataType::Utf8, true),
            Field::new("d_model", DataType::UInt64, true),
            Field::new("token_fingerprint", DataType::Utf8, true),
            Field::new("path", DataType::Utf8, false),
        ]));
        let mut rows = Vec::new();
        for table in Table::ALL {
            rows.extend(
                self.layout
                    .partitions(table)
                    .map_err(|e| DataFusionError::Plan(format!("cache_info(): {e:#}")))?,
            );
        }
        // Dictionaries: one row each (rows = latents).
        let dictionaries = diffsql_train::store::list(&self.layout)
            .map_err(|e| DataFusionError::Plan(format!("cache_info(): {e:#}")))?;
        let dict_dir = |m: &diffsql_train::store::DictionaryManifest| {
            diffsql_train::store::dictionary_dir(&self.layout, &m.id)
                .display()
                .to_string()
        };
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.iter()
                        .map(|(k, _)| k.table.name().to_string())
                        .chain(dictionaries.iter().map(|_| "dictionaries".to_string())),
                )),
                Arc::new(StringArray::from_iter_values(
                    rows.iter()
                        .map(|(k, _)| k.model.clone())
                        .chain(dictionaries.iter().map(|m| m.id.model.clone())),
                )),
                Arc::new(StringArray::from_iter(
                    rows.iter()
                        .map(|(k, _)| k.organism.clone())
                        .chain(dictionaries.iter().map(|m| Some(m.id.organism.clone()))),
                )),
                Arc::new(Int32Array::from_iter(
                    rows.iter()
                        .map(|(k, _)| k.layer)
                        .chain(dictionaries.iter().map(|m| Some(m.layer))),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    rows.iter()
                        .map(|(_, m)| m.rows)
                        .chain(dictionaries.iter().map(|m| m.latents as u64)),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    rows.iter()
                        .map(|(_, m)| m.files.len() as u64)
                        .chain(dictionaries.iter().map(|_| 1)),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    rows.iter()
                        .map(|(_, m)| m.bytes())
                        .chain(dictionaries.iter().map(|m| m.latents_bytes)),
                )),
                Arc::new(StringArray::from_iter(
                    rows.iter()
                        .map(|(_, m)| m.dtype.clone())
                        .chain(dictionaries.iter().map(|_| Some("float32".to_string()))),
                )),
                Arc::new(UInt64Array::from_iter(
                    rows.iter()
                        .map(|(_, m)| m.d_model.map(|d| d as u64))
                        .chain(dictionaries.iter().map(|m| Some(m.d_model as u64))),
                )),
                Arc::new(StringArray::from_iter(
                    rows.iter()
                        .map(|(_, m)| m.token_fingerprint.clone())
                        .chain(dictionaries.iter().map(|m| Some(m.source_fingerprint.clone()))),
                )),
                Arc::new(StringArray::from_iter_values(
                    rows.iter()
                        .map(|(k, _)| self.layout.partition_dir(k).display().to_string())
                        .chain(dictionaries.iter().map(dict_dir)),
                )),
            ],
        )?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}
