//! The `diffsql` command line: a thin layer over the library's modules.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use diffsql::pipeline;
use diffsql_core::cache::synth::{self, SynthSpec};
use diffsql_core::cache::writer::parquet_compression;
use diffsql_core::cache::CacheLayout;
use diffsql_core::config::{self, ConfigDir, Override};
use diffsql_model::one_line;
use diffsql_sql::shell::{Flow, Shell};
use diffsql_sql::{open_session_with, queries, SqlAccess};

mod cli;
use cli::{Cli, Command, ConfigAction, SqlArgs, SynthArgs};

/// mimalloc keeps freed pages for reuse: scans allocate large vector buffers batch after batch, and the
/// system allocator returns each to the kernel, paying page faults and zeroing on every batch.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// For the pipeline commands: freed memory stays with the process instead of going back to the kernel a second
/// after a free (mimalloc's default purge delay). Preprocessing frees and reallocates the same large buffers
/// batch after batch (each batch's logits: tokens × vocabulary floats per model, ~800 MB for SmolLM2 at batch
/// 32), and each came back as fresh pages the kernel had to zero: `clear_page_erms` was 13% of a SmolLM2 run
/// in `perf`, 3.2–3.6% after; end to end 9–10% faster in interleaved runs, peak memory ~5% higher
/// (bench/README.md).
fn keep_freed_memory() {
    // mi_option_purge_delay in mimalloc 3.x's option enum (libmimalloc-sys names no constant for it).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // Safety: sets a process-wide option that mimalloc reads on each purge; -1 means never purge.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) };
}

fn main() -> ExitCode {
    pin_thread_count();
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Sets `RAYON_NUM_THREADS` to the cores this process may use when the user has not set it, before any
/// thread starts. Without it candle works out its thread count again on every matmul by reading
/// `/proc/cpuinfo` (`num_cpus::get_physical`): a quarter of the time of batch-1 generation on SmolLM2-135M
/// here (14.8 → 19.9 tokens/s with it set).
fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Single-threaded here: nothing reads the environment concurrently.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    if cli.rehash {
        diffsql_core::cache::verify::set_policy(diffsql_core::cache::verify::VerifyPolicy::EveryProcess);
    }
    let configs = ConfigDir::new(&cli.configs);
    if !cli.workers.is_empty() {
        pipeline::use_workers(&cli.workers)?;
    } else if !matches!(cli.command, Some(Command::Worker { .. })) {
        let configured = configs.workers()?;
        if !configured.is_empty() {
            pipeline::use_workers(&configured)?;
        }
    }
    let pipeline_fixed = |mode: Option<&str>| -> Result<Vec<Override>> {
        let mut fixed = Vec::new();
        if let Some(c) = &cli.cache {
            fixed.push(Override::set("cache_dir", toml::Value::String(c.display().to_string())));
        }
        if let Some(m) = mode {
            fixed.push(Override::set("pipeline.mode", toml::Value::String(m.to_string())));
        }
        Ok(fixed)
    };
    // Commands that only read or write a cache take it from --cache, else from config.toml's cache_dir.
    let cache = match &cli.cache {
        Some(c) => c.clone(),
        None => configs.cache_dir()?,
    };
    let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build();
    match cli.command {
        Some(Command::Preprocess(args)) => {
            keep_freed_memory();
            let fixed = pipeline_fixed(Some("preprocessing"))?;
            pipeline::multirun(&configs, &args.overrides, args.multirun, &fixed, |s| {
                pipeline::preprocess(s, &configs)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Run(args)) => {
            keep_freed_memory();
            let fixed = pipeline_fixed(None)?;
            pipeline::multirun(&configs, &args.overrides, args.multirun, &fixed, |s| {
                pipeline::run_one(s, &configs, &cli.queries)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Report { overrides }) => {
            let mut all = config::parse_all(&overrides, false)?;
            all.extend(pipeline_fixed(None)?);
            let settings = configs.resolve(&all)?;
            print!("{}", runtime()?.block_on(diffsql_diffing::report::report(&settings))?);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Generate(args)) => {
            let mut all = config::parse_all(&args.overrides, false)?;
            all.extend(pipeline_fixed(None)?);
            let settings = configs.resolve(&all)?;
            let sampling = match args.temperature {
                None => diffsql_model::generate::Sampling::Greedy,
                Some(temperature) => diffsql_model::generate::Sampling::Sample {
                    temperature,
                    top_p: args.top_p,
                    seed: args.seed,
                },
            };
            let (results, timings) = diffsql_model::generation::side_by_side(
                &settings,
                &configs.project_root(),
                &args.prompts,
                args.chat,
                args.max_new_tokens,
                sampling,
            )?;
            let organism = &settings.organism.name;
            let width = organism.len().max(4);
            for (i, r) in results.iter().enumerate() {
                println!(
                    "prompt {}: {}",
                    i + 1,
                    diffsql_model::data::token_text::quoted(&r.prompt)
                );
                println!(
                    "  {:width$}  {}",
                    "base",
                    diffsql_model::data::token_text::quoted(&r.base)
                );
                println!(
                    "  {organism:width$}  {}",
                    diffsql_model::data::token_text::quoted(&r.organism)
                );
            }
            for (side, t) in ["base", organism.as_str()].iter().zip(timings) {
                eprintln!(
                    "{side}: {} prompts, {} new tokens in {:.2} s ({:.1} tokens/s)",
                    results.len(),
                    t.new_tokens,
                    t.seconds,
                    t.tokens_per_second()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Config {
            action: ConfigAction::Show { overrides },
        }) => {
            let mut all = config::parse_all(&overrides, false)?;
            all.extend(pipeline_fixed(None)?);
            let tree = configs.merged_tree(&all)?;
            configs.resolve(&all)?; // validate types, and the organism's variant for the model, too
            print!("{}", toml::to_string_pretty(&tree)?);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Config {
            action: ConfigAction::List { model, kind },
        }) => {
            for g in [config::Group::Dataset, config::Group::DiffingMethod] {
                println!("{:<15} {}", g.name(), configs.choices(g)?.join(", "));
            }
            println!();
            let catalogue = config::Catalogue::read(&configs)?;
            print!("{}", catalogue.listing(model.as_deref(), kind.as_deref())?);
            Ok(ExitCode::SUCCESS)
        }
        None => runtime()?.block_on(sql(&cache, &cli.queries, &configs, SqlArgs::default())),
        Some(Command::Sql(args)) => runtime()?.block_on(sql(&cache, &cli.queries, &configs, args)),
        Some(Command::Query { name: None, .. }) => {
            println!("{}", queries::list(&cli.queries)?.join("\n"));
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Query {
            name: Some(name),
            format,
        }) => runtime()?.block_on(async {
            let sql = queries::read(&cli.queries, &name)?;
            let ctx = shell_session(&cache, &configs, false)?;
            diffsql_sql::register_model_functions(&ctx, configs.clone());
            let mut shell = Shell::new(ctx, cli.queries.clone(), format);
            shell.execute(&sql).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Some(Command::Serve(args)) => {
            let mut all = config::parse_all(&args.overrides, false)?;
            all.extend(pipeline_fixed(None)?);
            let settings = configs.resolve(&all)?;
            if args.query_timeout == 0 {
                bail!("--query-timeout must be at least 1 second");
            }
            let options = diffsql_serve::ServeOptions {
                address: args.bind,
                port: args.port,
                cache_dir: settings.cache_dir.clone(),
                results_dir: settings.results_dir.clone(),
                configs: configs.clone(),
                model: settings.model.name.clone(),
                overrides: all,
                query_timeout: std::time::Duration::from_secs(args.query_timeout),
                open: args.open,
            };
            runtime()?.block_on(diffsql_serve::serve(options))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Synth(args)) => synth_cache(&cache, args),
        Some(Command::Check { repair }) => check_cache(&cache, repair),
        #[cfg(feature = "cluster")]
        Some(Command::Worker { listen }) => {
            let shutdown = async {
                tokio::signal::ctrl_c().await.ok();
            };
            runtime()?.block_on(diffsql_cluster::serve_worker(listen, shutdown))?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(not(feature = "cluster"))]
        Some(Command::Worker { listen }) => {
            bail!("this diffsql was built without the cluster feature, so it cannot serve a worker on {listen}: build it with the default features")
        }
    }
}

fn check_cache(cache: &Path, repair: bool) -> Result<ExitCode> {
    let layout = CacheLayout::new(cache);
    if !layout.exists()? {
        bail!(
            "the cache {} does not exist: pass --cache DIR (or set DIFFSQL_CACHE)",
            cache.display()
        );
    }
    let started = std::time::Instant::now();
    let report = diffsql_core::cache::verify::check(&layout, repair)?;
    let (dictionaries, damaged_dictionaries) = diffsql_train::store::check(&layout, repair)?;
    for d in &report.damaged {
        println!("damaged  {}  {}", d.key, d.problem);
    }
    for d in &damaged_dictionaries {
        println!("damaged  {}  {}", d.dir.display(), d.problem);
    }
    if repair {
        for d in &report.damaged {
            println!("removed  {}  ({})", d.key, d.dir.display());
        }
        for d in &damaged_dictionaries {
            println!(
                "removed  {}  (a dictionary: its method trains it again)",
                d.dir.display()
            );
        }
    }
    let damaged = report.damaged.len() + damaged_dictionaries.len();
    eprintln!(
        "checked {} partitions, {} files, {} and {dictionaries} dictionaries in {:.1} s: {damaged} damaged{}",
        report.partitions,
        report.files,
        indicatif::HumanBytes(report.bytes),
        started.elapsed().as_secs_f64(),
        match (damaged == 0, repair) {
            (true, _) => String::new(),
            (false, true) => format!(
                ", {} removed: rerun `diffsql preprocess` to rebuild them",
                report.removed
            ),
            (false, false) => ": run `diffsql check --repair` to remove them, then rerun `diffsql preprocess`".into(),
        }
    );
    Ok(if damaged == 0 || repair {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The session of `diffsql sql`: the cache and the configured results folder are never written by SQL.
fn shell_session(cache: &Path, configs: &ConfigDir, read_only: bool) -> Result<datafusion::prelude::SessionContext> {
    let results = configs
        .resolve(&[])
        .map(|s| s.results_dir)
        .unwrap_or_else(|_| PathBuf::from("results"));
    let access = SqlAccess {
        read_only,
        protected: vec![results],
    };
    open_session_with(cache, access)
}

async fn sql(cache: &Path, queries_dir: &Path, configs: &ConfigDir, args: SqlArgs) -> Result<ExitCode> {
    let ctx = shell_session(cache, configs, args.read_only)?;
    diffsql_sql::register_model_functions(&ctx, configs.clone());
    let mut shell = Shell::new(ctx, queries_dir.to_path_buf(), args.format);
    shell.set_timing(args.timing);
    if !args.commands.is_empty() || !args.files.is_empty() {
        // Backslash commands (\d, \timing on, ...) work here as in the shell, one per line.
        for c in &args.commands {
            if shell.script(c).await? == Flow::Quit {
                return Ok(ExitCode::SUCCESS);
            }
        }
        for f in &args.files {
            let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
            let flow = shell
                .script(&text)
                .await
                .with_context(|| format!("in {}", f.display()))?;
            if flow == Flow::Quit {
                break;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if std::io::stdin().is_terminal() {
        interactive(&mut shell).await?;
    } else {
        for line in std::io::stdin().lock().lines() {
            if shell.line(&line?).await == Flow::Quit {
                break;
            }
        }
        shell.finish().await;
    }
    Ok(if shell.failures() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn interactive(shell: &mut Shell) -> Result<()> {
    use rustyline::error::ReadlineError;
    let history = history_path();
    let mut editor = rustyline::DefaultEditor::new()?;
    if let Some(h) = &history {
        editor.load_history(h).ok();
    }
    println!(
        "diffsql {} — SQL over activation caches. \\? for help, \\q to quit.",
        env!("CARGO_PKG_VERSION")
    );
    loop {
        let prompt = if shell.in_statement() {
            "     ...> "
        } else {
            "diffsql> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    editor.add_history_entry(line.as_str()).ok();
                }
                if shell.line(&line).await == Flow::Quit {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => shell.cancel_statement(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        editor.save_history(h).ok();
    }
    Ok(())
}

fn history_path() -> Option<PathBuf> {
    std::env::var_os("DIFFSQL_HISTORY")
        .map(PathBuf::from)
        .or_else(|| dirs::data_dir().map(|d| d.join("diffsql").join("history")))
}

fn synth_cache(cache: &Path, args: SynthArgs) -> Result<ExitCode> {
    let dtype = args.dtype;
    let spec = SynthSpec {
        model: args.model,
        organisms: args.organisms,
        layers: args.layers,
        tokens: args.tokens,
        seq_len: args.seq_len,
        d_model: args.d_model,
        dtype,
        seed: args.seed,
        noise: args.noise,
        options: diffsql_core::cache::WriteOptions {
            rows_per_file: args.rows_per_file,
            vector_compression: parquet_compression(args.compression),
            ..Default::default()
        },
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let written = synth::write(&CacheLayout::new(cache), &spec, |_| {})?;
    if written == 0 {
        eprintln!(
            "the synthetic cache in {} is already complete: nothing written",
            cache.display()
        );
    } else {
        eprintln!(
            "wrote {written} activation partitions ({} tokens × {} layers × {} organisms + base) to {} in {:.1} s",
            spec.tokens,
            spec.layers.len(),
            spec.organisms.len(),
            cache.display(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
