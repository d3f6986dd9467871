//! The vector column of a cache file read straight from its mapped pages: an uncompressed PLAIN page of
//! fixed-size vectors is already the Arrow buffer a query wants, so a batch is a view of the mapping, not a
//! copy of it. Parquet's own reader copies every value out of the page (a third of a scan's time, measured);
//! here a page is copied only when its values are not aligned to their element type (caches written before
//! `file_writer` aligned them). Compressed or otherwise encoded columns go through Parquet's reader.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use datafusion::arrow::array::{ArrayRef, FixedSizeBinaryArray, RecordBatch};
use datafusion::arrow::buffer::{Buffer, MutableBuffer};
use datafusion::arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use parquet::basic::{Compression, Encoding, Repetition, Type as PhysicalType};
use parquet::column::page::Page;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::serialized_reader::SerializedPageReader;

use super::source::FileBytes;

/// Pages read in place and pages copied (misaligned) by this process, for benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageCounts {
    pub in_place: u64,
    pub copied: u64,
}

static IN_PLACE: AtomicU64 = AtomicU64::new(0);
static COPIED: AtomicU64 = AtomicU64::new(0);

/// Counters of the pages this process has read through [`VectorPages`].
pub fn page_counts() -> PageCounts {
    PageCounts {
        in_place: IN_PLACE.load(Ordering::Relaxed),
        copied: COPIED.load(Ordering::Relaxed),
    }
}

/// Whether leaf `column` of `row_groups` can be read by [`VectorPages`]: a required, non-repeated
/// fixed-length byte array, stored uncompressed and PLAIN in every one of those row groups.
pub fn readable_in_place(metadata: &ParquetMetaData, row_groups: &[usize], column: usize) -> bool {
    let schema = metadata.file_metadata().schema_descr();
    if column >= schema.num_columns() {
        return false;
    }
    let descr = schema.column(column);
    let required = descr.self_type().get_basic_info().repetition() == Repetition::REQUIRED;
    if descr.physical_type() != PhysicalType::FIXED_LEN_BYTE_ARRAY || !required || descr.max_rep_level() != 0 {
        return false;
    }
    row_groups.iter().all(|&rg| {
        metadata.row_groups().get(rg).is_some_and(|g| {
            let chunk = g.column(column);
            chunk.compression() == Compression::UNCOMPRESSED
                && chunk.dictionary_page_offset().is_none()
                && chunk.encodings().all(|e| matches!(e, Encoding::PLAIN | Encoding::RLE))
        })
    })
}

/// Batches of one vector column of a file's row groups, each a one-column [`RecordBatch`] whose
/// `FixedSizeBinary` array shares the file's bytes.
pub struct VectorPages {
    data: FileBytes,
    metadata: Arc<ParquetMetaData>,
    column: usize,
    schema: SchemaRef,
    width: usize,
    /// The alignment the values need (their element type's width).
    element: usize,
    batch_rows: usize,
    row_groups: VecDeque<usize>,
    pages: Option<SerializedPageReader<FileBytes>>,
    /// The current page's values and how many rows of it were handed out.
    page: Option<(Buffer, usize, usize)>,
}

impl VectorPages {
    /// Reads leaf `column` (stored as `field`, a `FixedSizeBinary` whose values are vectors of elements
    /// `element` bytes wide) of `row_groups` of the file `data`, in batches of at most `batch_rows` rows.
    /// Check [`readable_in_place`] first.
    pub fn new(
        data: FileBytes,
        metadata: Arc<ParquetMetaData>,
        column: usize,
        field: FieldRef,
        element: usize,
        row_groups: &[usize],
        batch_rows: usize,
    ) -> Result<Self> {
        let DataType::FixedSizeBinary(width) = field.data_type() else {
            bail!("column {} is not a fixed-size binary column", field.name());
        };
        let width = *width as usize;
        if width == 0 || element == 0 || !width.is_multiple_of(element) {
            bail!(
                "column {} holds {width}-byte values, not {element}-byte elements",
                field.name()
            );
        }
        Ok(Self {
            data,
            metadata,
            column,
            schema: Arc::new(Schema::new(vec![field])),
            width,
            element,
            batch_rows: batch_rows.max(1),
            row_groups: row_groups.iter().copied().collect(),
            pages: None,
            page: None,
        })
    }

    /// The next page's values, or `None` at the end of the last row group.
    fn next_page(&mut self) -> Result<Option<(Buffer, usize)>> {
        loop {
            if self.pages.is_none() {
                let Some(rg) = self.row_groups.pop_front() else {
                    return Ok(None);
                };
                let group = self.metadata.row_group(rg);
                self.pages = Some(SerializedPageReader::new(
                    Arc::new(self.data.clone()),
                    group.column(self.column),
                    group.num_rows() as usize,
                    None,
                )?);
            }
            let reader = self.pages.as_mut().expect("opened above");
            let (buf, values, levels) = match reader.next().transpose()? {
                None => {
                    self.pages = None;
                    continue;
                }
                Some(Page::DataPage {
                    buf,
                    num_values,
                    encoding: Encoding::PLAIN,
                    ..
                }) => (buf, num_values as usize, 0),
                Some(Page::DataPageV2 {
                    buf,
                    num_values,
                    encoding: Encoding::PLAIN,
                    def_levels_byte_len,
                    rep_levels_byte_len,
                    ..
                }) => (
                    buf,
                    num_values as usize,
                    (def_levels_byte_len + rep_levels_byte_len) as usize,
                ),
                Some(other) => bail!(
                    "a {:?} page with {:?} encoding in a vector column read in place",
                    other.page_type(),
                    other.encoding()
                ),
            };
            if values == 0 {
                continue;
            }
            let bytes = values * self.width;
            if buf.len() < levels + bytes {
                bail!(
                    "a vector page holds {} bytes, its header says {values} values of {} bytes",
                    buf.len() - levels.min(buf.len()),
                    self.width
                );
            }
            let values_bytes = buf.slice(levels..levels + bytes);
            let buffer = if (values_bytes.as_ptr() as usize).is_multiple_of(self.element) {
                IN_PLACE.fetch_add(1, Ordering::Relaxed);
                Buffer::from(values_bytes)
            } else {
                COPIED.fetch_add(1, Ordering::Relaxed);
                let mut aligned = MutableBuffer::new(bytes);
                aligned.extend_from_slice(&values_bytes);
                aligned.into()
            };
            return Ok(Some((buffer, values)));
        }
    }
}

impl Iterator for VectorPages {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        let (buffer, rows, taken) = match self.page.take() {
            Some(page) => page,
            None => match self.next_page() {
                Ok(Some((buffer, rows))) => (buffer, rows, 0),
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            },
        };
        let n = (rows - taken).min(self.batch_rows);
        let values = buffer.slice_with_length(taken * self.width, n * self.width);
        if taken + n < rows {
            self.page = Some((buffer, rows, taken + n));
        }
        let array: ArrayRef = Arc::new(FixedSizeBinaryArray::new(self.width as i32, values, None));
        Some(RecordBatch::try_new(Arc::clone(&self.schema), vec![array]).map_err(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::layout::{CacheLayout, PartitionKey};
    use crate::cache::vectors::VectorEncoding;
    use crate::cache::writer::{ActivationBatch, ActivationWriter, WriteOptions, VECTOR_COLUMN};
    use bytes::Bytes;
    use datafusion::arrow::array::{Array, Int32Array, Int64Array, StringArray};
    use diffsql_udfs::vector::ElementType;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ArrowWriter;
    use parquet::basic::ZstdLevel;
    use parquet::file::properties::WriterProperties;

    const ROWS: usize = 1000;

    fn values(d: usize) -> Vec<f32> {
        (0..ROWS * d).map(|i| (i as f32 * 0.37).sin() * 3.0).collect()
    }

    fn mapped(path: &std::path::Path) -> Bytes {
        let file = std::fs::File::open(path).unwrap();
        Bytes::from_owner(unsafe { memmap2::Mmap::map(&file) }.unwrap())
    }

    /// Every batch of `path`'s vector column read through VectorPages, and whether each shares `data`.
    fn read(data: &Bytes, batch_rows: usize, element: usize) -> (bool, Vec<(Vec<u8>, bool)>) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(data.clone()).unwrap();
        let metadata = Arc::clone(builder.metadata());
        let column = builder
            .parquet_schema()
            .columns()
            .iter()
            .position(|c| c.name() == VECTOR_COLUMN)
            .unwrap();
        let groups: Vec<usize> = (0..metadata.num_row_groups()).collect();
        if !readable_in_place(&metadata, &groups, column) {
            return (false, Vec::new());
        }
        let field = Arc::new(builder.schema().field_with_name(VECTOR_COLUMN).unwrap().clone());
        let range = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
        let pages = VectorPages::new(
            FileBytes::whole(data.clone()),
            metadata,
            column,
            field,
            element,
            &groups,
            batch_rows,
        )
        .unwrap();
        let batches = pages
            .map(|b| {
                let b = b.unwrap();
                let a = b
                    .column(0)
                    .as_any()
                    .downcast_ref::<FixedSizeBinaryArray>()
                    .unwrap()
                    .clone();
                assert!(a.len() <= batch_rows);
                let ptr = a.value_data().as_ptr() as usize;
                assert!(ptr.is_multiple_of(element), "a batch's values are misaligned");
                (
                    a.value_data()[..a.len() * a.value_length() as usize].to_vec(),
                    range.contains(&ptr),
                )
            })
            .collect();
        (true, batches)
    }

    #[test]
    fn aligned_pages_are_read_in_place_and_equal_what_was_written() {
        for (dtype, d) in [
            (ElementType::Float32, 67),
            (ElementType::BFloat16, 33),
            (ElementType::Float16, 8),
        ] {
            let root = tempfile::tempdir().unwrap();
            let layout = CacheLayout::new(root.path());
            let encoding = VectorEncoding::new(dtype, d);
            let options = WriteOptions {
                row_group_rows: 300,
                ..WriteOptions::default()
            };
            let key = PartitionKey::activations("m", "caps", 0);
            let mut w = ActivationWriter::create(&layout, key.clone(), encoding, options).unwrap();
            let v = values(d);
            let seq: Vec<i64> = (0..ROWS as i64).collect();
            let pos: Vec<i32> = (0..ROWS as i32).collect();
            for chunk in (0..ROWS).step_by(170) {
                let end = (chunk + 170).min(ROWS);
                w.push(&ActivationBatch {
                    dataset: "ds",
                    split: "train",
                    seq_id: &seq[chunk..end],
                    pos: &pos[chunk..end],
                    token_id: &pos[chunk..end],
                    vectors: &v[chunk * d..end * d],
                })
                .unwrap();
            }
            let manifest = w.finish().unwrap();
            let file = layout.partition_dir(&key).join(&manifest.files[0].name);
            let data = mapped(&file);
            let (ok, batches) = read(&data, 128, dtype.width());
            assert!(ok, "{dtype:?}: not readable in place");
            assert!(batches.iter().all(|b| b.1), "{dtype:?}: a page was copied");
            let all: Vec<u8> = batches.into_iter().flat_map(|b| b.0).collect();
            assert_eq!(
                all,
                encoding.encode(&v).unwrap().value_data()[..ROWS * d * dtype.width()]
            );
            // Any Parquet reader reads the padded file: the keys and vectors come back whole.
            let rows: Vec<_> = ParquetRecordBatchReaderBuilder::try_new(data)
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect();
            let seq_back: Vec<i64> = rows
                .iter()
                .flat_map(|b| {
                    b.column_by_name("seq_id")
                        .unwrap()
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                })
                .collect();
            assert_eq!(seq_back, seq);
        }
    }

    /// A file in the layout caches had before aligned pages (vectors last, Parquet's default 1 MiB pages):
    /// still read, misaligned pages copied, values equal; a compressed column is left to Parquet's reader.
    #[test]
    fn older_files_are_read_with_a_copy_where_misaligned_and_compressed_ones_not_at_all() {
        let d = 67;
        let encoding = VectorEncoding::new(ElementType::Float32, d);
        let schema = Arc::new(Schema::new(vec![
            datafusion::arrow::datatypes::Field::new("dataset", DataType::Utf8, false),
            datafusion::arrow::datatypes::Field::new("pos", DataType::Int32, false),
            encoding.storage_field(VECTOR_COLUMN),
        ]));
        let v = values(d);
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec!["ds"; ROWS])),
                Arc::new(Int32Array::from((0..ROWS as i32).collect::<Vec<_>>())),
                Arc::new(encoding.encode(&v).unwrap()),
            ],
        )
        .unwrap();
        for compressed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("old.parquet");
            let mut props = WriterProperties::builder()
                .set_max_row_group_row_count(Some(400))
                .set_data_page_size_limit(20_000)
                .set_dictionary_enabled(false);
            if compressed {
                props = props.set_compression(Compression::ZSTD(ZstdLevel::default()));
            }
            let mut w = ArrowWriter::try_new(
                std::fs::File::create(&path).unwrap(),
                Arc::clone(&schema),
                Some(props.build()),
            )
            .unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            let (ok, batches) = read(&mapped(&path), 1000, 4);
            assert_eq!(ok, !compressed);
            if ok {
                assert!(batches.len() > 3, "expected several pages");
                let all: Vec<u8> = batches.into_iter().flat_map(|b| b.0).collect();
                assert_eq!(all, encoding.encode(&v).unwrap().value_data()[..ROWS * d * 4]);
            }
        }
    }
}
