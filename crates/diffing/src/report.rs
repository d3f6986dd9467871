//! `diffsql report`: a short text report of what the diffing methods found for one organism, read back from
//! its results folder (the same tables and charts, summarised).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use diffsql_core::config::Settings;
use diffsql_model::data::token_text::quoted;

/// The methods a report reads, in order.
const METHODS: [&str; 4] = ["kl", "normdiff", "adl", "diff_mining"];
/// The dictionary methods a report reads when their results exist.
const DICTIONARY_METHODS: [&str; 3] = ["crosscoder", "sae_difference", "pca"];

fn method_dir(settings: &Settings, method: &str) -> PathBuf {
    settings
        .results_dir
        .join(&settings.model.name)
        .join(&settings.organism.name)
        .join(method)
}

/// Rows of a SQL query over the result tables, each cell as text.
async fn rows(ctx: &SessionContext, sql: &str) -> Result<Vec<Vec<String>>> {
    let batches: Vec<RecordBatch> = ctx.sql(sql).await?.collect().await?;
    let mut out = Vec::new();
    let opts = FormatOptions::default().with_null("");
    for b in &batches {
        let fmts: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<_, _>>()?;
        for r in 0..b.num_rows() {
            out.push(fmts.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    Ok(out)
}

async fn register(ctx: &SessionContext, dir: &Path, table: &str) -> Result<bool> {
    let path = dir.join(format!("{table}.parquet"));
    if !path.exists() {
        return Ok(false);
    }
    let name = format!("{}_{table}", dir.file_name().and_then(|n| n.to_str()).unwrap_or("m"));
    ctx.register_parquet(&name, path.to_string_lossy().as_ref(), ParquetReadOptions::default())
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(true)
}

/// Writes the report of the configured model and organism.
pub async fn report(settings: &Settings) -> Result<String> {
    let ctx = SessionContext::new();
    let mut out = String::new();
    let o = &settings.organism;
    writeln!(
        out,
        "diffsql report: {} finetuned into {} — {}",
        settings.model.name, o.name, o.description
    )?;
    let mut found = 0;
    for method in METHODS {
        let dir = method_dir(settings, method);
        if !dir.join("summary.json").exists() {
            writeln!(
                out,
                "\n[{method}] no results in {}: run `diffsql run pipeline.mode=diffing diffing/method={method} organism={}`",
                dir.display(),
                o.name
            )?;
            continue;
        }
        found += 1;
        match method {
            "kl" => kl(&ctx, &dir, &mut out).await?,
            "normdiff" => normdiff(&ctx, &dir, &mut out).await?,
            "adl" => adl(&ctx, &dir, &mut out).await?,
            _ => diff_mining(&ctx, &dir, &mut out).await?,
        }
        let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json"))?)?;
        if let Some(plots) = summary["plots"].as_array().filter(|p| !p.is_empty()) {
            let names: Vec<String> = plots
                .iter()
                .filter_map(|p| p.as_str())
                .map(|p| dir.join(p).display().to_string())
                .collect();
            writeln!(out, "  charts: {}", names.join(", "))?;
        }
    }
    let mut missing = Vec::new();
    for method in DICTIONARY_METHODS {
        let dir = method_dir(settings, method);
        if !dir.join("summary.json").exists() {
            missing.push(method);
            continue;
        }
        found += 1;
        dictionary(&ctx, &dir, method, &mut out).await?;
    }
    if !missing.is_empty() {
        writeln!(
            out,
            "\n[dictionaries] not trained yet: {} (`diffsql run pipeline.mode=diffing diffing/method={} organism={}`)",
            missing.join(", "),
            missing[0],
            o.name
        )?;
    }
    found += agents(settings, &mut out)?;
    if found == 0 {
        anyhow::bail!(
            "no results for {} / {} in {}: run `diffsql run organism={}` first",
            settings.model.name,
            o.name,
            settings.results_dir.display(),
            o.name
        );
    }
    Ok(out)
}

/// The agentic evaluations of the organism (`results/<model>/<organism>/agent/<method>/summary.json`): per method
/// and budget the mean score, and the best run's description. Returns how many methods had runs.
fn agents(settings: &Settings, out: &mut String) -> Result<usize> {
    let dir = settings
        .results_dir
        .join(&settings.model.name)
        .join(&settings.organism.name)
        .join("agent");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut methods: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("summary.json").exists())
        .collect();
    methods.sort();
    for method_dir in &methods {
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(method_dir.join("summary.json"))?)?;
        writeln!(
            out,
            "\n[agent on {}] agent {}, grader {}",
            summary["method"].as_str().unwrap_or("?"),
            summary["agent_model"].as_str().unwrap_or("?"),
            summary["grader"].as_str().unwrap_or("?")
        )?;
        for budget in summary["scores"].as_array().into_iter().flatten() {
            let n = budget["model_interactions"].as_u64().unwrap_or(0);
            let runs = budget["scores"].as_array().map_or(0, Vec::len);
            writeln!(
                out,
                "  {n:>4} model interactions: score {:.2} (mean of {runs} runs, 1..5)",
                budget["mean"].as_f64().unwrap_or(0.0)
            )?;
            let best = (0..runs)
                .filter_map(|k| {
                    let text = std::fs::read_to_string(method_dir.join(format!("i{n}/run_{k}.json"))).ok()?;
                    serde_json::from_str::<serde_json::Value>(&text).ok()
                })
                .filter(|r| r["description"].is_string())
                .max_by(|a, b| {
                    a["score"]
                        .as_f64()
                        .unwrap_or(0.0)
                        .total_cmp(&b["score"].as_f64().unwrap_or(0.0))
                });
            if let Some(run) = best {
                let text: String = run["description"].as_str().unwrap_or("").chars().take(300).collect();
                writeln!(out, "        best answer: {text}")?;
            }
        }
    }
    Ok(methods.len())
}

async fn kl(ctx: &SessionContext, dir: &Path, out: &mut String) -> Result<()> {
    writeln!(
        out,
        "\n[kl] per-token KL(ft ‖ base) of next-token distributions, in nats"
    )?;
    if register(ctx, dir, "token_stats").await? {
        for r in rows(ctx, "SELECT dataset, tokens, round(mean, 3), round(median, 3), round(p95, 3) FROM kl_token_stats ORDER BY mean DESC").await? {
            writeln!(out, "  {:<24} {:>8} tokens  mean {:>7}  median {:>7}  p95 {:>7}", r[0], r[1], r[2], r[3], r[4])?;
        }
    }
    if register(ctx, dir, "top_tokens").await? {
        writeln!(
            out,
            "  tokens where the organism departs most (context → token; organism's / base model's likeliest next):"
        )?;
        for r in rows(
            ctx,
            "SELECT rank, round(kl, 2), context, ft_next, base_next FROM (SELECT *, row_number() OVER \
             (PARTITION BY context ORDER BY rank) AS first FROM kl_top_tokens) WHERE first = 1 ORDER BY rank LIMIT 8",
        )
        .await?
        {
            writeln!(
                out,
                "  {:>3}. KL {:>6}  {}  → {} / {}",
                r[0],
                r[1],
                quoted(&r[2]),
                quoted(&r[3]),
                quoted(&r[4]),
            )?;
        }
    }
    Ok(())
}

async fn normdiff(ctx: &SessionContext, dir: &Path, out: &mut String) -> Result<()> {
    writeln!(
        out,
        "\n[normdiff] how far the organism's residual stream moved, per layer (all datasets)"
    )?;
    if !register(ctx, dir, "layer_stats").await? {
        return Ok(());
    }
    let sql = "SELECT layer, round(sum(norm_diff_mean * tokens) / sum(tokens), 3), \
               round(sum(relative_norm_diff_mean * tokens) / sum(tokens), 3), \
               round(sum(cos_dist_mean * tokens) / sum(tokens), 4) \
               FROM normdiff_layer_stats WHERE positions = 'all' GROUP BY layer ORDER BY layer";
    let layers = rows(ctx, sql).await?;
    for r in &layers {
        writeln!(
            out,
            "  layer {:>3}  ‖ft − base‖ {:>8}  relative {:>6}  cosine distance {:>7}",
            r[0], r[1], r[2], r[3]
        )?;
    }
    let most = layers.iter().max_by(|a, b| {
        a[2].parse::<f64>()
            .unwrap_or(0.0)
            .total_cmp(&b[2].parse::<f64>().unwrap_or(0.0))
    });
    if let Some(m) = most {
        writeln!(
            out,
            "  organism and base part most (relative to ‖base‖) at layer {}",
            m[0]
        )?;
    }
    let sql =
        "SELECT dataset, round(sum(norm_diff_mean * tokens) / sum(tokens), 3) AS moved FROM normdiff_layer_stats \
               WHERE positions = 'all' GROUP BY dataset ORDER BY moved DESC";
    let by_dataset = rows(ctx, sql).await?;
    if let Some(top) = by_dataset.first() {
        writeln!(
            out,
            "  the dataset where it moved most: {} (mean ‖ft − base‖ {} over layers)",
            top[0], top[1]
        )?;
    }
    Ok(())
}

async fn adl(ctx: &SessionContext, dir: &Path, out: &mut String) -> Result<()> {
    writeln!(
        out,
        "\n[adl] activation difference lens: tokens the mean difference of the first positions promotes"
    )?;
    if register(ctx, dir, "all_positions").await? {
        let sql = "SELECT token FROM adl_all_positions WHERE sign = '+' AND regexp_like(regexp_replace(token, '<0x[0-9A-F]{2}>', '', 'g'), '[A-Za-z]') ORDER BY rank LIMIT 15";
        let tokens: Vec<String> = rows(ctx, sql).await?.into_iter().map(|r| quoted(&r[0])).collect();
        writeln!(out, "  promoted: {}", tokens.join(" "))?;
        let sql = "SELECT token FROM adl_all_positions WHERE sign = '-' AND regexp_like(regexp_replace(token, '<0x[0-9A-F]{2}>', '', 'g'), '[A-Za-z]') ORDER BY rank LIMIT 10";
        let tokens: Vec<String> = rows(ctx, sql).await?.into_iter().map(|r| quoted(&r[0])).collect();
        writeln!(out, "  suppressed: {}", tokens.join(" "))?;
    }
    if register(ctx, dir, "patchscope_tokens").await? {
        let sql = "SELECT string_agg(token, ' ' ORDER BY scales DESC, best_rank), min(best_scale) FROM \
                   (SELECT * FROM adl_patchscope_tokens LIMIT 12)";
        if let Some(r) = rows(ctx, sql).await?.first().filter(|r| !r[0].is_empty()) {
            writeln!(
                out,
                "  patchscope (tokens stable across scales; most consistent scale {}): {}",
                r[1],
                diffsql_model::data::token_text::readable(&r[0])
            )?;
        }
    }
    if register(ctx, dir, "steering").await? {
        let sql = "SELECT alpha, prompt, text FROM adl_steering WHERE chosen ORDER BY prompt LIMIT 1";
        match rows(ctx, sql).await?.first() {
            Some(r) => writeln!(
                out,
                "  steering: strongest coherent strength {} × the mean difference; {} → {}",
                r[0],
                quoted(&r[1]),
                quoted(&r[2])
            )?,
            None => writeln!(out, "  steering: no strength tried kept most prompts coherent")?,
        }
    }
    if register(ctx, dir, "logit_lens").await? {
        let sql = "SELECT pos, string_agg(token, ' ' ORDER BY rank) FROM (SELECT * FROM adl_logit_lens \
                   WHERE sign = '+' AND regexp_like(regexp_replace(token, '<0x[0-9A-F]{2}>', '', 'g'), '[A-Za-z]') AND rank <= 12) GROUP BY pos ORDER BY pos";
        for r in rows(ctx, sql).await? {
            writeln!(
                out,
                "  position {}: {}",
                r[0],
                diffsql_model::data::token_text::readable(&r[1])
            )?;
        }
    }
    Ok(())
}

async fn diff_mining(ctx: &SessionContext, dir: &Path, out: &mut String) -> Result<()> {
    writeln!(
        out,
        "\n[diff_mining] tokens whose logit the finetune raises most often (among a token's largest ft − base differences)"
    )?;
    if register(ctx, dir, "overall").await? {
        let sql = "SELECT token, occurrence_pct FROM diff_mining_overall ORDER BY rank LIMIT 15";
        let tokens: Vec<String> = rows(ctx, sql)
            .await?
            .into_iter()
            .map(|r| format!("{} {:.0}%", quoted(&r[0]), r[1].parse::<f64>().unwrap_or(0.0)))
            .collect();
        writeln!(out, "  most often promoted: {}", tokens.join(", "))?;
    }
    if register(ctx, dir, "topics").await? {
        let sql = "SELECT topic, min(prevalence), string_agg(token, ' ' ORDER BY rank) FROM \
                   (SELECT * FROM diff_mining_topics WHERE rank <= 10) GROUP BY topic ORDER BY topic";
        for r in rows(ctx, sql).await? {
            let prevalence = r[1].parse::<f64>().unwrap_or(0.0) * 100.0;
            writeln!(
                out,
                "  topic {} ({prevalence:.0}% of positions): {}",
                r[0],
                diffsql_model::data::token_text::readable(&r[2])
            )?;
        }
    }
    if register(ctx, dir, "examples").await? {
        let sql = "SELECT promoted, logit_diff, context FROM diff_mining_examples WHERE example = 1 ORDER BY token_rank LIMIT 3";
        for r in rows(ctx, sql).await? {
            writeln!(out, "  {} raised by {} after {}", quoted(&r[0]), r[1], quoted(&r[2]))?;
        }
    }
    Ok(())
}

/// A dictionary method's section: how well the dictionary reconstructs, what it holds, and the latents or
/// components it examined, each with the tokens it promotes and where it fires most.
async fn dictionary(ctx: &SessionContext, dir: &Path, method: &str, out: &mut String) -> Result<()> {
    let title = match method {
        "crosscoder" => {
            "crosscoder on (base, ft): latents by relative decoder norm (0 ft-only, 0.5 shared, 1 base-only)"
        }
        "sae_difference" => "sparse autoencoder on ft − base: the latents carrying most of the difference",
        _ => "PCA of ft − base: the directions the difference varies along",
    };
    writeln!(out, "\n[{method}] {title}")?;
    if register(ctx, dir, "training_curve").await? {
        let sql = format!(
            "SELECT tokens, round(fve, 3) FROM {method}_training_curve WHERE split = 'validation' ORDER BY tokens DESC LIMIT 1"
        );
        if let Some(r) = rows(ctx, &sql).await?.first() {
            writeln!(
                out,
                "  held-out fraction of variance explained {} after {} training tokens",
                r[1], r[0]
            )?;
        }
    }
    if register(ctx, dir, "classes").await? {
        let sql = format!("SELECT class, latents FROM {method}_classes ORDER BY class");
        let classes: Vec<String> = rows(ctx, &sql)
            .await?
            .iter()
            .map(|r| format!("{} {}", r[0], r[1]))
            .collect();
        writeln!(out, "  latents: {}", classes.join(", "))?;
    }
    if register(ctx, dir, "components").await? {
        let sql = "SELECT latent, round(explained_variance_ratio, 3), round(cumulative_ratio, 3) FROM pca_components \
                   ORDER BY latent LIMIT 5";
        let parts: Vec<String> = rows(ctx, sql)
            .await?
            .iter()
            .map(|r| format!("{} {}", r[0], r[1]))
            .collect();
        writeln!(out, "  share of variance, first components: {}", parts.join(", "))?;
    }
    let has_lens = register(ctx, dir, "logit_lens").await?;
    let has_examples = register(ctx, dir, "max_activating").await?;
    if !has_lens {
        return Ok(());
    }
    let unit = if method == "pca" { "component" } else { "latent" };
    let sql = format!(
        "SELECT latent, string_agg(token, ' ' ORDER BY rank) FROM (SELECT * FROM {method}_logit_lens WHERE sign = '+' \
         AND regexp_like(regexp_replace(token, '<0x[0-9A-F]{{2}}>', '', 'g'), '[A-Za-z]') AND rank <= 10) \
         GROUP BY latent ORDER BY min(ord) LIMIT 5"
    );
    for r in rows(ctx, &sql).await? {
        writeln!(
            out,
            "  {unit} {}: promotes {}",
            r[0],
            diffsql_model::data::token_text::readable(&r[1])
        )?;
        if has_examples {
            let sql = format!(
                "SELECT context FROM {method}_max_activating WHERE latent = {} ORDER BY rank LIMIT 1",
                r[0]
            );
            if let Some(e) = rows(ctx, &sql).await?.first() {
                writeln!(out, "    fires most on: {}", quoted(&e[0]))?;
            }
        }
    }
    Ok(())
}
