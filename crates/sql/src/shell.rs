//! The `diffsql>` shell: statements ended by `;` over several lines, and backslash commands.
//!
//! The engine reads lines from any source; `main` feeds it from rustyline on a terminal and from
//! standard input otherwise, so piped sessions behave exactly like typed ones.

use diffsql_core::cache::vector_pages::page_counts;
use diffsql_core::cache::verify;
use diffsql_model::one_line;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use datafusion::prelude::SessionContext;

use super::output::{write_result, Format};
use super::queries;
use super::session::run_statements;

/// What the caller should do after a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

/// Help shown by `\?`.
pub const HELP: &str = "\
Statements end with ';' and may span lines. Commands:
  \\d               list tables
  \\d NAME          show the columns of a table
  \\df              list diffsql's functions
  \\timing [on|off] show how long each statement takes
  \\format table|csv|json
  \\i FILE          run the SQL in FILE
  \\run NAME        run a saved query from the queries directory (\\run alone lists them)
  \\?               this help
  \\q               quit";

/// Shell state over one session.
pub struct Shell {
    ctx: SessionContext,
    queries_dir: PathBuf,
    format: Format,
    timing: bool,
    buffer: String,
    failures: usize,
}

impl Shell {
    /// A shell over `ctx`, finding saved queries in `queries_dir`.
    pub fn new(ctx: SessionContext, queries_dir: PathBuf, format: Format) -> Self {
        Self {
            ctx,
            queries_dir,
            format,
            timing: false,
            buffer: String::new(),
            failures: 0,
        }
    }

    /// True while a statement is being continued over several lines.
    pub fn in_statement(&self) -> bool {
        !self.buffer.trim().is_empty()
    }

    /// Turns per-statement timing on or off.
    pub fn set_timing(&mut self, on: bool) {
        self.timing = on;
    }

    /// How many statements or commands failed so far.
    pub fn failures(&self) -> usize {
        self.failures
    }

    /// Forgets a half-typed statement (Ctrl-C at the prompt).
    pub fn cancel_statement(&mut self) {
        self.buffer.clear();
    }

    /// Handles one input line: a backslash command, or more SQL; every statement the buffer now completes
    /// (ended by a `;` outside strings, quoted names and comments) runs, and any rest waits for more lines.
    pub async fn line(&mut self, line: &str) -> Flow {
        let trimmed = line.trim();
        if !self.in_statement() && trimmed.starts_with('\\') {
            return match self.command(trimmed).await {
                Ok(flow) => flow,
                Err(e) => {
                    self.report(e);
                    Flow::Continue
                }
            };
        }
        self.buffer.push_str(line);
        self.buffer.push('\n');
        let (statements, rest) = split_statements(&self.buffer);
        self.buffer = rest;
        for sql in statements {
            if let Err(e) = self.execute(&sql).await {
                self.report(e);
            }
        }
        Flow::Continue
    }

    /// Runs a script (`-c` text, a `-f` file, `\i`): backslash commands on their own lines and SQL
    /// statements, in order, stopping at the first error.
    pub async fn script(&mut self, text: &str) -> Result<Flow> {
        let mut sql = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('\\') && split_statements(&sql).1.trim().is_empty() {
                let (statements, _) = split_statements(&sql);
                sql.clear();
                for s in statements {
                    self.execute(&s).await?;
                }
                if self.command(trimmed).await? == Flow::Quit {
                    return Ok(Flow::Quit);
                }
                continue;
            }
            sql.push_str(line);
            sql.push('\n');
        }
        if !sql.trim().is_empty() {
            self.execute(&sql).await?;
        }
        Ok(Flow::Continue)
    }

    /// Runs what is left in the buffer at end of input (a last statement without `;`).
    pub async fn finish(&mut self) {
        if self.in_statement() {
            let sql = std::mem::take(&mut self.buffer);
            if let Err(e) = self.execute(&sql).await {
                self.report(e);
            }
        }
    }

    fn report(&mut self, e: anyhow::Error) {
        self.failures += 1;
        eprintln!("Error: {}", one_line(&e));
    }

    /// Runs SQL text (one or more statements) and prints each result.
    pub async fn execute(&mut self, sql: &str) -> Result<()> {
        let format = self.format;
        let timing = self.timing;
        let mut started = Instant::now();
        let mut checks = verify::stats();
        let mut pages = page_counts();
        run_statements(&self.ctx, sql, |result| {
            let mut out = std::io::stdout().lock();
            write_result(&mut out, format, &result.schema, &result.batches)?;
            out.flush()?;
            if timing {
                let (now, pages_now) = (verify::stats(), page_counts());
                let done = now - checks;
                eprintln!(
                    "Time: {:.3} s ({} rows; cache files checked {}, hashed {} ({:.1} MB); vector pages read in place {}, copied {})",
                    started.elapsed().as_secs_f64(),
                    result.rows(),
                    done.files_checked,
                    done.files_hashed,
                    done.bytes_hashed as f64 / 1e6,
                    pages_now.in_place - pages.in_place,
                    pages_now.copied - pages.copied
                );
                (checks, pages) = (now, pages_now);
            }
            started = Instant::now();
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn command(&mut self, line: &str) -> Result<Flow> {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or_default();
        let arg: Vec<&str> = words.collect();
        let arg = arg.join(" ");
        match command {
            "\\q" | "\\quit" => return Ok(Flow::Quit),
            "\\?" | "\\h" | "\\help" => println!("{HELP}"),
            "\\d" if arg.is_empty() => self.list_tables()?,
            "\\d" => self.describe(&arg).await?,
            "\\df" => list_functions(),
            "\\timing" => {
                self.timing = match arg.as_str() {
                    "" => !self.timing,
                    "on" => true,
                    "off" => false,
                    other => bail!("\\timing takes on or off, got {other:?}"),
                };
                println!("Timing is {}.", if self.timing { "on" } else { "off" });
            }
            "\\format" => {
                self.format =
                    Format::parse(&arg).with_context(|| format!("\\format takes table, csv or json, got {arg:?}"))?;
                println!("Output format is {arg}.");
            }
            "\\i" => {
                if arg.is_empty() {
                    bail!("\\i needs a file name");
                }
                let sql = std::fs::read_to_string(&arg).with_context(|| format!("cannot read {arg}"))?;
                Box::pin(self.script(&sql)).await.with_context(|| format!("in {arg}"))?;
            }
            "\\run" if arg.is_empty() => println!("{}", queries::list(&self.queries_dir)?.join("\n")),
            "\\run" => {
                let sql = queries::read(&self.queries_dir, &arg)?;
                self.execute(&sql).await?;
            }
            other => bail!("unknown command {other}; \\? lists the commands"),
        }
        Ok(Flow::Continue)
    }

    fn list_tables(&self) -> Result<()> {
        let mut names: Vec<String> = self
            .ctx
            .catalog("datafusion")
            .and_then(|c| c.schema("public"))
            .map(|s| s.table_names())
            .unwrap_or_default();
        names.sort();
        for n in names {
            println!("{n}");
        }
        let registry = self
            .ctx
            .state()
            .config()
            .get_extension::<super::dictionary::DictionaryRegistry>();
        if let Some(registry) = registry {
            let dictionaries = registry.list()?;
            if !dictionaries.is_empty() {
                println!("\ndictionaries (SELECT * FROM latents('NAME')):");
                for m in dictionaries {
                    println!(
                        "{}  {} at layer {}, {} latents, held-out FVE {:.3}",
                        m.id,
                        m.kind.name(),
                        m.layer,
                        m.latents,
                        m.validation.fve
                    );
                }
            }
        }
        Ok(())
    }

    async fn describe(&self, name: &str) -> Result<()> {
        let table = self
            .ctx
            .table_provider(name)
            .await
            .with_context(|| format!("no table {name:?}; \\d lists them"))?;
        let schema = table.schema();
        let width = schema.fields().iter().map(|f| f.name().len()).max().unwrap_or(0);
        for f in schema.fields() {
            let null = if f.is_nullable() { "" } else { " not null" };
            println!("{:width$}  {}{null}", f.name(), f.data_type());
        }
        Ok(())
    }
}

/// Splits SQL text at the `;` that end statements, reading it with the SQL tokenizer so that a `;` or a line
/// break inside a string, a quoted name, a comment or a dollar-quoted body does not split. Returns the
/// complete statements and the unfinished rest (which may be only whitespace). Text the tokenizer cannot
/// finish (an open string or comment) is all rest: it waits for more input.
pub fn split_statements(text: &str) -> (Vec<String>, String) {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, text).tokenize_with_location() else {
        return (Vec::new(), text.to_string());
    };
    // Byte offset of every line start, to turn (line, column in chars) locations into byte offsets.
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let offset = |line: u64, column: u64| -> usize {
        let start = line_starts
            .get((line as usize).saturating_sub(1))
            .copied()
            .unwrap_or(text.len());
        text[start..]
            .char_indices()
            .nth((column as usize).saturating_sub(1))
            .map_or(text.len(), |(i, _)| start + i)
    };
    let mut statements = Vec::new();
    let mut from = 0;
    for t in tokens.iter().filter(|t| t.token == Token::SemiColon) {
        let end = offset(t.span.end.line, t.span.end.column);
        let statement = &text[from..end];
        if !statement.trim().trim_end_matches(';').trim().is_empty() {
            statements.push(statement.to_string());
        }
        from = end;
    }
    (statements, text[from..].to_string())
}

fn list_functions() {
    for f in diffsql_udfs::scalar_functions() {
        if let Some(doc) = f.documentation() {
            println!("{:32} {}", doc.syntax_example, first_sentence(&doc.description));
        }
    }
    for f in diffsql_udfs::aggregate_functions() {
        if let Some(doc) = f.documentation() {
            println!("{:32} {}", doc.syntax_example, first_sentence(&doc.description));
        }
    }
    for doc in super::dictionary::documentation() {
        println!("{:32} {}", doc.syntax_example, first_sentence(&doc.description));
    }
    println!("{:32} A dictionary's latents table.", "latents(name)");
    println!("{:32} A dictionary's training curve.", "training_curve(name)");
    println!("{:32} What the cache holds, one row per partition.", "cache_info()");
    println!(
        "{:32} Topics of (row, item, value) triplets by NMF.",
        "nmf((SELECT r, i, v ...), topics)"
    );
    println!(
        "{:32} A vector through the model's final norm and unembedding.",
        "logit_lens(vector, model, k)"
    );
    println!(
        "{:32} Greedy continuation by the base model or an organism.",
        "generate(side, prompt, n)"
    );
    println!(
        "{:32} Generation with alpha · vector added after a layer.",
        "steer(side, prompt, v, layer, alpha, n)"
    );
    println!(
        "{:32} A vector read by patching it into an identity prompt.",
        "patchscope(side, v, layer, scales)"
    );
}

fn first_sentence(s: &str) -> &str {
    s.split(". ").next().unwrap_or(s).trim_end_matches('.')
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn statements_split_only_at_semicolons_outside_strings_and_comments() {
        let (s, rest) = split_statements("SELECT 'first;\nsecond' AS s;\nSELECT 2; SELECT");
        assert_eq!(s, vec!["SELECT 'first;\nsecond' AS s;", "\nSELECT 2;"]);
        assert_eq!(rest, " SELECT");
        let (s, rest) = split_statements("SELECT 1 -- a; comment\n; /* b; */ SELECT \"x;y\" FROM t;");
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(rest.is_empty());
        let (s, rest) = split_statements("SELECT $$a;b$$;");
        assert_eq!(s, vec!["SELECT $$a;b$$;"]);
        assert!(rest.is_empty());
        // An open string waits for more input.
        let (s, rest) = split_statements("SELECT 'open;\n");
        assert!(s.is_empty());
        assert_eq!(rest, "SELECT 'open;\n");
        // Non-ASCII text before the semicolon keeps byte offsets right.
        let (s, _) = split_statements("SELECT 'é—x'; SELECT 1;");
        assert_eq!(s, vec!["SELECT 'é—x';", " SELECT 1;"]);
        // Empty statements are dropped.
        assert!(split_statements(";;\n").0.is_empty());
    }
}
