//! Reading a dataset's samples from where its config says: local JSONL, plain text or Parquet, or a
//! Hugging Face dataset repo through the hub cache.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use datafusion::arrow::array::{Array, AsArray, ListArray, StructArray};
use datafusion::arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use diffsql_core::config::settings::{locate, DatasetConfig, DatasetFormat};

/// One chat turn.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What one sample holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    Text(String),
    Chat(Vec<Message>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Jsonl,
    Text,
    Parquet,
}

/// How one file is read: the configured format, or (`auto`) the file's extension.
fn format_of(cfg: &DatasetConfig, file: &Path) -> Result<Format> {
    Ok(match cfg.format {
        DatasetFormat::Jsonl => Format::Jsonl,
        DatasetFormat::Text => Format::Text,
        DatasetFormat::Parquet => Format::Parquet,
        DatasetFormat::Auto => match file.extension().and_then(|e| e.to_str()).unwrap_or("") {
            "jsonl" | "json" => Format::Jsonl,
            "txt" | "text" => Format::Text,
            "parquet" => Format::Parquet,
            other => bail!(
                "dataset {}: cannot tell how to read {} from its extension {other:?}: set format to jsonl, text or parquet",
                cfg.name,
                file.display()
            ),
        },
    })
}

/// Whether a dataset source is meant as a file path rather than a hub id `org/name`: it is absolute or
/// relative to `.`/`~`, has more than two components, or its last component has a data file extension.
fn looks_like_a_path(source: &str) -> bool {
    let last = source.rsplit(['/', '\\']).next().unwrap_or(source);
    source.starts_with(['/', '.', '~'])
        || source.contains('\\')
        || source.split('/').count() > 2
        || [".jsonl", ".json", ".txt", ".parquet", ".csv", ".gz"]
            .iter()
            .any(|e| last.ends_with(e))
}

/// The files a dataset reads, in order.
pub fn files(cfg: &DatasetConfig, project_root: &Path) -> Result<Vec<PathBuf>> {
    let source = locate(&cfg.source, project_root);
    let path = Path::new(&source);
    let readable = |p: &str| [".jsonl", ".json", ".txt", ".parquet"].iter().any(|e| p.ends_with(e));
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if path.is_dir() {
        let mut out: Vec<PathBuf> = fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| readable(&p.to_string_lossy()))
            .collect();
        out.sort();
        if out.is_empty() {
            bail!(
                "dataset {}: {} holds no .jsonl, .txt or .parquet files",
                cfg.name,
                path.display()
            );
        }
        return Ok(out);
    }
    if looks_like_a_path(&cfg.source) {
        let resolved = if Path::new(&cfg.source).is_absolute() {
            PathBuf::from(&cfg.source)
        } else {
            project_root.join(&cfg.source)
        };
        bail!(
            "dataset {}: file not found: {} (source {:?} resolved against {}); fix source in configs/dataset/{}.toml",
            cfg.name,
            resolved.display(),
            cfg.source,
            project_root.display(),
            cfg.name
        );
    }
    if !diffsql_core::hub::is_repo_id(&source) {
        bail!(
            "dataset {}: {} does not exist and is not a Hugging Face dataset id like org/name",
            cfg.name,
            cfg.source
        );
    }
    // A hub dataset: the files of the split (by path, as the hub's data/train-*.parquet convention).
    let split = cfg.split.clone();
    let wanted = move |p: &str| {
        readable(p)
            && Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(split.as_str()))
    };
    diffsql_core::hub::repo_files(&source, hf_hub::RepoType::Dataset, "main", &wanted)
        .with_context(|| format!("dataset {}", cfg.name))
}

/// Reads up to `max_samples` samples.
pub fn read(cfg: &DatasetConfig, project_root: &Path, max_samples: usize) -> Result<Vec<Sample>> {
    let limit = max_samples;
    let mut out = Vec::new();
    for file in files(cfg, project_root)? {
        if out.len() >= limit {
            break;
        }
        let room = limit - out.len();
        let samples = match format_of(cfg, &file)? {
            Format::Jsonl => read_jsonl(cfg, &file, room)?,
            Format::Text => read_text(&file, room)?,
            Format::Parquet => read_parquet(cfg, &file, room)?,
        };
        out.extend(samples);
    }
    Ok(out)
}

fn read_jsonl(cfg: &DatasetConfig, file: &Path, limit: usize) -> Result<Vec<Sample>> {
    let text = fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if out.len() == limit {
            break;
        }
        let where_ = || format!("{} line {}", file.display(), i + 1);
        let value: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", where_()))?;
        if let Some(t) = value.get(&cfg.text_field).and_then(|v| v.as_str()) {
            out.push(Sample::Text(t.to_string()));
        } else if let Some(m) = value.get(&cfg.messages_field) {
            let messages: Vec<Message> = serde_json::from_value(m.clone()).with_context(|| {
                format!(
                    "{}: `{}` is not a list of {{role, content}}",
                    where_(),
                    cfg.messages_field
                )
            })?;
            out.push(Sample::Chat(messages));
        } else {
            bail!(
                "{}: has neither `{}` (text) nor `{}` (chat); set text_field or messages_field in configs/dataset/{}.toml",
                where_(),
                cfg.text_field,
                cfg.messages_field,
                cfg.name
            );
        }
    }
    Ok(out)
}

/// Plain text: each block separated by a blank line is a sample.
fn read_text(file: &Path, limit: usize) -> Result<Vec<Sample>> {
    let text = fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(text
        .replace("\r\n", "\n")
        .split("\n\n")
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .take(limit)
        .map(|b| Sample::Text(b.to_string()))
        .collect())
}

fn read_parquet(cfg: &DatasetConfig, file: &Path, limit: usize) -> Result<Vec<Sample>> {
    let f = fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .with_context(|| format!("{} is not a Parquet file", file.display()))?
        .build()?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.with_context(|| format!("cannot read {}", file.display()))?;
        if let Some(col) = batch.column_by_name(&cfg.text_field) {
            let strings = datafusion::arrow::compute::cast(col, &DataType::Utf8)?;
            let strings = strings.as_string::<i32>();
            out.extend(strings.iter().flatten().map(|s| Sample::Text(s.to_string())));
        } else if let Some(col) = batch.column_by_name(&cfg.messages_field) {
            let list = col
                .as_any()
                .downcast_ref::<ListArray>()
                .with_context(|| format!("{}: `{}` is not a list", file.display(), cfg.messages_field))?;
            for i in 0..list.len() {
                out.push(Sample::Chat(messages_of(&list.value(i), file)?));
            }
        } else {
            bail!(
                "{}: has neither a `{}` nor a `{}` column; set text_field or messages_field in configs/dataset/{}.toml",
                file.display(),
                cfg.text_field,
                cfg.messages_field,
                cfg.name
            );
        }
        if out.len() >= limit {
            out.truncate(limit);
            break;
        }
    }
    Ok(out)
}

fn messages_of(turns: &dyn Array, file: &Path) -> Result<Vec<Message>> {
    let s = turns
        .as_any()
        .downcast_ref::<StructArray>()
        .with_context(|| format!("{}: chat turns are not structs", file.display()))?;
    let field = |name: &str| -> Result<Vec<String>> {
        let col = s
            .column_by_name(name)
            .with_context(|| format!("{}: chat turns have no `{name}`", file.display()))?;
        let col = datafusion::arrow::compute::cast(col, &DataType::Utf8)?;
        Ok(col
            .as_string::<i32>()
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect())
    };
    Ok(field("role")?
        .into_iter()
        .zip(field("content")?)
        .map(|(role, content)| Message { role, content })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(source: &Path) -> DatasetConfig {
        DatasetConfig {
            name: "d".into(),
            description: String::new(),
            source: source.to_string_lossy().into_owned(),
            format: DatasetFormat::Auto,
            split: "train".into(),
            text_field: "text".into(),
            messages_field: "messages".into(),
        }
    }

    #[test]
    fn jsonl_text_and_chat_plain_text_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("a.jsonl");
        std::fs::write(
            &jsonl,
            "{\"text\": \"one\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n{\"text\": \"three\"}\n",
        )
        .unwrap();
        let samples = read(&config(&jsonl), dir.path(), usize::MAX).unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0], Sample::Text("one".into()));
        assert!(matches!(&samples[1], Sample::Chat(m) if m[0].content == "hi"));
        assert_eq!(read(&config(&jsonl), dir.path(), 2).unwrap().len(), 2);
        let txt = dir.path().join("b.txt");
        std::fs::write(&txt, "first block\nstill first\n\n\nsecond\r\n\r\nthird").unwrap();
        let samples = read(&config(&txt), dir.path(), usize::MAX).unwrap();
        assert_eq!(
            samples,
            vec![
                Sample::Text("first block\nstill first".into()),
                Sample::Text("second".into()),
                Sample::Text("third".into())
            ]
        );
    }

    #[test]
    fn parquet_text_and_chat_columns() {
        use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, StructArray};
        use datafusion::arrow::buffer::OffsetBuffer;
        use datafusion::arrow::datatypes::{Field, Fields};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let write = |path: &Path, column: &str, array: ArrayRef| {
            let batch = RecordBatch::try_from_iter([(column, array)]).unwrap();
            let mut w =
                parquet::arrow::ArrowWriter::try_new(fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
        };
        let text = dir.path().join("t.parquet");
        write(&text, "text", Arc::new(StringArray::from(vec!["a", "b", "c"])));
        assert_eq!(
            read(&config(&text), dir.path(), 2).unwrap(),
            vec![Sample::Text("a".into()), Sample::Text("b".into())]
        );
        let fields = Fields::from(vec![
            Field::new("role", DataType::Utf8, false),
            Field::new("content", DataType::Utf8, false),
        ]);
        let turns = StructArray::new(
            fields.clone(),
            vec![
                Arc::new(StringArray::from(vec!["user", "assistant", "user"])) as ArrayRef,
                Arc::new(StringArray::from(vec!["hi", "hello", "again"])) as ArrayRef,
            ],
            None,
        );
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::Struct(fields), true)),
            OffsetBuffer::from_lengths([2, 1]),
            Arc::new(turns),
            None,
        );
        let chat = dir.path().join("c.parquet");
        write(&chat, "messages", Arc::new(list));
        let samples = read(&config(&chat), dir.path(), usize::MAX).unwrap();
        assert_eq!(samples.len(), 2);
        assert!(
            matches!(&samples[0], Sample::Chat(m) if m.len() == 2 && m[1].role == "assistant" && m[1].content == "hello")
        );
    }

    #[test]
    fn bad_input_names_the_file_line_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("bad.jsonl");
        std::fs::write(&jsonl, "{\"text\": \"ok\"}\n{not json\n").unwrap();
        let e = format!("{:#}", read(&config(&jsonl), dir.path(), usize::MAX).unwrap_err());
        assert!(e.contains("bad.jsonl line 2: not JSON"), "{e}");
        std::fs::write(&jsonl, "{\"body\": \"x\"}\n").unwrap();
        let e = format!("{:#}", read(&config(&jsonl), dir.path(), usize::MAX).unwrap_err());
        assert!(
            e.contains("has neither `text` (text) nor `messages` (chat)") && e.contains("text_field"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            read(&config(&dir.path().join("none.jsonl")), dir.path(), usize::MAX).unwrap_err()
        );
        assert!(e.contains("file not found") && e.contains("none.jsonl"), "{e}");
        // A relative path that looks like one is a missing file, not a hub id (no network, no DNS error).
        let relative = DatasetConfig {
            source: "data/does_not_exist.jsonl".into(),
            ..config(&dir.path().join("x"))
        };
        let e = format!("{:#}", read(&relative, dir.path(), usize::MAX).unwrap_err());
        assert!(
            e.contains("file not found")
                && e.contains(&dir.path().join("data/does_not_exist.jsonl").display().to_string()),
            "{e}"
        );
        let e = format!(
            "{:#}",
            files(
                &DatasetConfig {
                    source: "not a repo".into(),
                    ..config(&dir.path().join("x"))
                },
                dir.path()
            )
            .unwrap_err()
        );
        assert!(e.contains("does not exist and is not a Hugging Face dataset id"), "{e}");
        assert!(!looks_like_a_path("science-of-finetuning/fineweb-1m-sample"));
        let csv = dir.path().join("x.csv");
        std::fs::write(&csv, "a,b\n").unwrap();
        let e = format!("{:#}", read(&config(&csv), dir.path(), usize::MAX).unwrap_err());
        assert!(e.contains("set format to jsonl, text or parquet"), "{e}");
    }
}
