//! One cache file written row group by row group, so that the values of an uncompressed vector column start
//! on a 64-byte boundary of the file: a scan that maps the file then views them in place as Arrow arrays
//! instead of copying every vector out of the page cache (`vector_pages`).
//!
//! The vector column is the file's first column and holds one PLAIN page per row group. Before each row group
//! the writer puts the zero bytes that bring that page's values onto the boundary (Parquet locates column
//! chunks by the offsets in its footer, so bytes between row groups are never read; every Parquet reader
//! reads such files). Other files are written as `ArrowWriter` writes them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnWriter, ArrowRowGroupWriterFactory};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

/// The boundary vector values are aligned to (Arrow's own buffer alignment).
pub const VECTOR_ALIGNMENT: usize = 64;

/// A `Write` that hashes what passes through it, so a file's checksum costs no second read.
pub(crate) struct HashingWriter<W> {
    pub(crate) inner: W,
    pub(crate) hasher: twox_hash::XxHash3_64,
    pub(crate) bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        std::hash::Hasher::write(&mut self.hasher, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type Sink = HashingWriter<BufWriter<File>>;

/// A Parquet file being written.
pub(crate) struct FileSink {
    writer: SerializedFileWriter<Sink>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// Column writers of the row group in progress (empty between row groups).
    columns: Vec<ArrowColumnWriter>,
    rows_in_group: usize,
    row_groups: usize,
    row_group_rows: usize,
    /// Bytes per value of the first column when its pages are to be aligned.
    aligned_width: Option<usize>,
}

impl FileSink {
    /// Creates `path`. `aligned` asks for the first column's values to be aligned; it must then be an
    /// uncompressed, PLAIN fixed-size binary column in one page per row group (see [`vector_page_rows`]).
    pub(crate) fn create(
        path: &Path,
        schema: SchemaRef,
        props: WriterProperties,
        row_group_rows: usize,
        aligned: bool,
    ) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let sink = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: twox_hash::XxHash3_64::new(),
            bytes: 0,
        };
        let aligned_width = match schema.fields().first().map(|f| f.data_type()) {
            Some(DataType::FixedSizeBinary(w)) if aligned => Some(*w as usize),
            _ => None,
        };
        let (writer, factory) = ArrowWriter::try_new(sink, schema.clone(), Some(props))?.into_serialized_writer()?;
        Ok(Self {
            writer,
            factory,
            schema,
            columns: Vec::new(),
            rows_in_group: 0,
            row_groups: 0,
            row_group_rows: row_group_rows.max(1),
            aligned_width,
        })
    }

    /// Appends rows, closing a row group every `row_group_rows` rows.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.columns.is_empty() {
                self.columns = self.factory.create_column_writers(self.row_groups)?;
            }
            let take = (self.row_group_rows - self.rows_in_group).min(batch.num_rows() - offset);
            let mut writers = self.columns.iter_mut();
            for (field, column) in self.schema.fields().iter().zip(batch.columns()) {
                for leaf in compute_leaves(field, &column.slice(offset, take))? {
                    writers.next().context("more leaf columns than writers")?.write(&leaf)?;
                }
            }
            self.rows_in_group += take;
            offset += take;
            if self.rows_in_group == self.row_group_rows {
                self.close_row_group()?;
            }
        }
        Ok(())
    }

    fn close_row_group(&mut self) -> Result<()> {
        if self.columns.is_empty() {
            return Ok(());
        }
        let chunks = std::mem::take(&mut self.columns)
            .into_iter()
            .map(ArrowColumnWriter::close)
            .collect::<parquet::errors::Result<Vec<_>>>()?;
        if let (Some(width), Some(first)) = (self.aligned_width, chunks.first()) {
            // One page: the chunk is its header and then rows × width bytes of values.
            let chunk = first.close().metadata.compressed_size() as usize;
            let header = chunk.saturating_sub(self.rows_in_group * width);
            let start = self.writer.bytes_written() + header;
            let pad = (VECTOR_ALIGNMENT - start % VECTOR_ALIGNMENT) % VECTOR_ALIGNMENT;
            self.writer.write_all(&[0u8; VECTOR_ALIGNMENT][..pad])?;
        }
        let mut group = self.writer.next_row_group()?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut group)?;
        }
        group.close()?;
        self.row_groups += 1;
        self.rows_in_group = 0;
        Ok(())
    }

    /// Writes the last row group and the footer; returns the byte count and xxh3-64 of the file, flushed and
    /// synced.
    pub(crate) fn finish(mut self) -> Result<(u64, String)> {
        self.close_row_group()?;
        let mut sink = self.writer.into_inner()?;
        sink.flush()?;
        let file = sink.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((sink.bytes, format!("{:016x}", std::hash::Hasher::finish(&sink.hasher))))
    }
}

/// The data page row limit that keeps a row group's vector column in one page.
pub(crate) fn vector_page_rows(row_group_rows: usize) -> usize {
    row_group_rows.max(parquet::file::properties::DEFAULT_DATA_PAGE_ROW_COUNT_LIMIT)
}
