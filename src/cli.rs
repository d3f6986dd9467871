//! The `diffsql` command line's grammar: the global options, the subcommands and their arguments, as clap
//! parses them (what each does is `main.rs`'s).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use diffsql_core::config::VectorCompression;
use diffsql_sql::Format;
use diffsql_udfs::vector::ElementType;

#[derive(Parser, Debug)]
#[command(
    name = "diffsql",
    version,
    about = "Find out what a finetune changed in a language model, with SQL over an activation cache"
)]
pub(crate) struct Cli {
    /// Cache directory, or s3://bucket/prefix (for preprocess and run: the same as the override cache_dir=DIR).
    #[arg(long, global = true, env = "DIFFSQL_CACHE")]
    pub(crate) cache: Option<PathBuf>,
    /// Directory of saved queries.
    #[arg(long, global = true, env = "DIFFSQL_QUERIES", default_value = "queries")]
    pub(crate) queries: PathBuf,
    /// Directory of configs (config.toml and the groups model/, organism/, dataset/, diffing/method/).
    #[arg(long, global = true, env = "DIFFSQL_CONFIGS", default_value = "configs")]
    pub(crate) configs: PathBuf,
    /// Hash every cache file this process reads, ignoring the verdicts kept in the cache (files are then
    /// hashed once per process; also `DIFFSQL_REHASH=1`); `diffsql check` always hashes everything.
    #[arg(long, global = true)]
    pub(crate) rehash: bool,
    /// Run the heavy stages of queries on these `diffsql worker`s (host:port,host:port); also the config key
    /// `workers`.
    #[arg(long, global = true, env = "DIFFSQL_WORKERS", value_delimiter = ',')]
    pub(crate) workers: Vec<String>,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run SQL over the cache: the `diffsql>` shell, or -c / -f without it.
    Sql(SqlArgs),
    /// Run a saved query from the queries directory by name (no name: list them).
    Query {
        name: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Run the base model and the organism over the datasets and fill the cache
    /// (`run pipeline.mode=preprocessing`). Arguments are overrides: organism=caps preprocessing.batch_size=4.
    Preprocess(PipelineArgs),
    /// Run the pipeline in its configured mode (pipeline.mode=preprocessing|diffing|evaluation|full).
    Run(PipelineArgs),
    /// Print what the diffing methods found for an organism (from its results folder).
    Report {
        /// Overrides, as for run (organism=caps, model=...).
        overrides: Vec<String>,
    },
    /// Continue prompts with the base model and the organism side by side (greedy unless --temperature).
    Generate(GenerateArgs),
    /// Show the resolved config, or the choices of each group.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Write a synthetic cache with known answers (see `docs/ARCHITECTURE.md`).
    Synth(SynthArgs),
    /// Serve the dashboard over the cache and the results folder on a local port (http://127.0.0.1:8421/).
    Serve(ServeArgs),
    /// Serve a worker that runs query stages sent by sessions started with --workers (every diffsql function,
    /// the cache scans); it reads the cache files the plans name (a shared directory, or an s3:// cache).
    Worker {
        /// Address to listen on (port 0: any free port, printed on stderr).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: std::net::SocketAddr,
    },
    /// Verify every file of the cache against its manifest (size and xxh3 checksum); exit 1 if any is damaged.
    Check {
        /// Remove damaged partitions, so that a rerun of `diffsql preprocess` rebuilds them.
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Args, Debug)]
pub(crate) struct PipelineArgs {
    /// Run every combination of comma-separated values (organism=caps,roman_concrete), one after another.
    #[arg(long, short = 'm')]
    pub(crate) multirun: bool,
    /// Overrides: group=name (model=, organism=, dataset=, diffing/method=) or key=value (a.b.c=value).
    pub(crate) overrides: Vec<String>,
}

#[derive(Args, Debug)]
pub(crate) struct GenerateArgs {
    /// A prompt (repeatable; all are continued together, batched).
    #[arg(long = "prompt", short = 'p', required = true)]
    pub(crate) prompts: Vec<String>,
    /// Render each prompt as a user turn with the model's chat template.
    #[arg(long)]
    pub(crate) chat: bool,
    #[arg(long, default_value_t = 48)]
    pub(crate) max_new_tokens: usize,
    /// Sample at this temperature (with --top-p and --seed) instead of greedy decoding.
    #[arg(long)]
    pub(crate) temperature: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    pub(crate) top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Overrides, as for run (organism=caps, model=...).
    pub(crate) overrides: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ConfigAction {
    /// Print the resolved config as TOML.
    Show {
        /// Overrides, as for run.
        overrides: Vec<String>,
    },
    /// List the choices of every group, and the catalogue: base models, organisms by type with their bases.
    List {
        /// Only organisms that have a checkpoint for this base model.
        #[arg(long)]
        model: Option<String>,
        /// Only organisms of this type (SDF, EM, Taboo, ...).
        #[arg(long = "type")]
        kind: Option<String>,
    },
}

#[derive(Args, Debug, Default)]
pub(crate) struct SqlArgs {
    /// SQL to run (repeatable); the shell does not start.
    #[arg(short = 'c', long = "command")]
    pub(crate) commands: Vec<String>,
    /// A file of SQL statements to run; the shell does not start.
    #[arg(short = 'f', long = "file")]
    pub(crate) files: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(crate) format: Format,
    /// Print each statement's time on stderr (as `\timing on`).
    #[arg(long)]
    pub(crate) timing: bool,
    /// Read-only session: refuse COPY, external tables and INSERT/UPDATE/DELETE (statements only read the
    /// cache's tables). Without it, COPY ... TO a file works anywhere outside the cache and results folders.
    #[arg(long)]
    pub(crate) read_only: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8421)]
    pub(crate) port: u16,
    /// Address to listen on. Anything but a loopback address makes the dashboard, its SQL console and the
    /// models reachable from other machines, without authentication.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) bind: std::net::IpAddr,
    /// Open the dashboard in the desktop's browser.
    #[arg(long)]
    pub(crate) open: bool,
    /// Longest a statement of the SQL console may run, in seconds.
    #[arg(long, default_value_t = 30)]
    pub(crate) query_timeout: u64,
    /// Overrides, as for run (model=..., results_dir=...).
    pub(crate) overrides: Vec<String>,
}

#[derive(Args, Debug)]
pub(crate) struct SynthArgs {
    #[arg(long, default_value = "synthetic")]
    pub(crate) model: String,
    /// Organisms besides the base, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "caps")]
    pub(crate) organisms: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3")]
    pub(crate) layers: Vec<i32>,
    #[arg(long, default_value_t = 4096)]
    pub(crate) tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub(crate) seq_len: usize,
    #[arg(long, default_value_t = 64)]
    pub(crate) d_model: usize,
    /// float32, float16 or bfloat16.
    #[arg(long, default_value = "float32", value_parser = parse_dtype)]
    pub(crate) dtype: ElementType,
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    #[arg(long, default_value_t = 1 << 17)]
    pub(crate) rows_per_file: usize,
    /// Compression of the vectors: none, snappy, zstd or zstd(N).
    #[arg(long, default_value = "none")]
    pub(crate) compression: VectorCompression,
    /// Standard deviation of noise added to organism vectors (0 keeps the exact known answers).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) noise: f32,
}

fn parse_dtype(s: &str) -> Result<ElementType> {
    ElementType::parse(s).with_context(|| format!("unknown dtype {s:?}: use float32, float16 or bfloat16"))
}
