//! Stage one of configuration: parse and check `key=value` overrides from the command line, with no I/O.
//!
//! Three kinds, as in hydra: a group choice (`model=gemma3_1B`, `diffing/method=kl`, `dataset=[a,b]`), a key
//! (`preprocessing.batch_size=4`, `+diffing.method.params.limit=5` to add a key that does not exist), and,
//! under `--multirun`, sweeps (`organism=caps,roman_concrete`) expanded into the cartesian product.

use std::fmt;

use anyhow::{bail, Result};

/// The config groups: a directory of TOML files under `configs/`, one chosen per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Model,
    Organism,
    Dataset,
    DiffingMethod,
}

impl Group {
    pub const ALL: [Group; 4] = [Group::Model, Group::Organism, Group::Dataset, Group::DiffingMethod];

    /// The name on the command line, which is also the directory under `configs/`.
    pub fn name(self) -> &'static str {
        match self {
            Group::Model => "model",
            Group::Organism => "organism",
            Group::Dataset => "dataset",
            Group::DiffingMethod => "diffing/method",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name() == s)
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an override sets.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Choose file(s) of a group.
    Group(Group),
    /// Set a key by its dotted path; `add` (written `+a.b=v`) allows a key the config does not have.
    Key { path: Vec<String>, add: bool },
}

/// The value of a group choice: one or several names (only `dataset` takes several).
pub type Choice = Vec<String>;

/// One value an override can take.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Choice(Choice),
    Toml(toml::Value),
}

/// A parsed override. More than one value means a sweep (only under `--multirun`).
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub target: Target,
    pub values: Vec<Value>,
    /// As written, for messages and run names.
    pub raw: String,
}

impl Override {
    /// Sets `key` (a dotted path the config has) to one value, as the command line's own flags do
    /// (`--cache DIR` is `cache_dir`): nothing is parsed, so a path with a comma is a path, not a sweep.
    pub fn set(key: &str, value: toml::Value) -> Self {
        Self {
            raw: format!("{key}={}", display_value(&Value::Toml(value.clone()))),
            target: Target::Key {
                path: key.split('.').map(str::to_string).collect(),
                add: false,
            },
            values: vec![Value::Toml(value)],
        }
    }

    /// The key as written (`model`, `preprocessing.batch_size`).
    pub fn key(&self) -> String {
        match &self.target {
            Target::Group(g) => g.name().to_string(),
            Target::Key { path, .. } => path.join("."),
        }
    }
}

/// Parses every argument; with `multirun` false a sweep is an error that says to add `--multirun`.
pub fn parse_all(args: &[String], multirun: bool) -> Result<Vec<Override>> {
    let mut out: Vec<Override> = Vec::new();
    for arg in args {
        let o = parse(arg)?;
        if o.values.len() > 1 && !multirun {
            bail!(
                "override `{arg}` sweeps over {} values: add --multirun to run each",
                o.values.len()
            );
        }
        if out.iter().any(|p| p.target == o.target) {
            bail!("`{}` is set twice on the command line", o.key());
        }
        out.push(o);
    }
    Ok(out)
}

/// Parses one `key=value` argument.
pub fn parse(arg: &str) -> Result<Override> {
    let Some((key, value)) = arg.split_once('=') else {
        bail!("`{arg}` is not an override: write key=value (e.g. organism=caps or preprocessing.batch_size=4)");
    };
    let target = parse_target(key.trim(), arg)?;
    let value = value.trim();
    if value.is_empty() {
        bail!("override `{arg}` has no value");
    }
    let pieces = split_top_level(value, arg)?;
    let values = pieces
        .iter()
        .map(|p| match &target {
            Target::Group(g) => parse_choice(*g, p, arg).map(Value::Choice),
            Target::Key { .. } => parse_value(p, arg).map(Value::Toml),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Override {
        target,
        values,
        raw: arg.to_string(),
    })
}

fn parse_target(key: &str, arg: &str) -> Result<Target> {
    if let Some(g) = Group::parse(key) {
        return Ok(Target::Group(g));
    }
    let (add, path) = match key.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, key),
    };
    if path.contains('/') {
        let groups: Vec<_> = Group::ALL.iter().map(|g| g.name()).collect();
        bail!(
            "unknown config group `{path}` in `{arg}`: the groups are {}",
            groups.join(", ")
        );
    }
    let segments: Vec<String> = path.split('.').map(str::to_string).collect();
    for s in &segments {
        let ok = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            bail!("`{key}` in `{arg}` is not a config key: use dotted names like preprocessing.batch_size");
        }
    }
    Ok(Target::Key { path: segments, add })
}

/// Splits a sweep `a,b,[c,d]` at the commas that are not inside brackets, braces or quotes.
fn split_top_level(value: &str, arg: &str) -> Result<Vec<String>> {
    let mut pieces = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0);
    for (i, c) in value.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                pieces.push(value[start..i].trim().to_string());
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            bail!("unbalanced brackets in `{arg}`");
        }
    }
    if depth != 0 || quote.is_some() {
        bail!("unbalanced brackets or quotes in `{arg}`");
    }
    pieces.push(value[start..].trim().to_string());
    if pieces.iter().any(String::is_empty) {
        bail!("empty value in sweep `{arg}`");
    }
    Ok(pieces)
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) && !s.starts_with('.')
}

/// An organism choice `type:KIND` stands for every organism of that type (`type:*`: every organism), for the
/// chosen base models; `--multirun` expands it once the configs are read ([`organism_type`]).
pub const TYPE_PREFIX: &str = "type:";

/// The type an organism choice names, when it is `type:KIND`.
pub fn organism_type(choice: &[String]) -> Option<&str> {
    match choice {
        [one] => one.strip_prefix(TYPE_PREFIX),
        _ => None,
    }
}

fn parse_choice(group: Group, piece: &str, arg: &str) -> Result<Choice> {
    let names: Vec<String> = match piece.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
        Some(inner) if group == Group::Dataset => inner.split(',').map(|s| s.trim().to_string()).collect(),
        Some(_) => bail!("`{arg}`: {group} takes one name (only dataset takes a list)"),
        None => vec![piece.to_string()],
    };
    if group == Group::Organism {
        if let [name] = names.as_slice() {
            if let Some(kind) = name.strip_prefix(TYPE_PREFIX) {
                if kind != "*" && !is_name(kind) {
                    bail!("`{kind}` in `{arg}` is not an organism type: write organism=type:SDF (or type:* for all)");
                }
                return Ok(names);
            }
        }
    }
    if let Some(bad) = names.iter().find(|n| !is_name(n)) {
        bail!("`{bad}` in `{arg}` is not a {group} name: names are letters, digits, '_', '-' and '.'");
    }
    Ok(names)
}

/// A value is TOML (`4`, `0.5`, `true`, `"x"`, `[1, 2]`); anything else is a bare string, and a list of
/// bare words (`[a,b]`) is a list of strings.
fn parse_value(piece: &str, arg: &str) -> Result<toml::Value> {
    if let Some(v) = toml_literal(piece) {
        return Ok(v);
    }
    if let Some(inner) = piece.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
        let items = split_top_level(inner, arg)?;
        return items
            .iter()
            .map(|i| parse_value(i, arg))
            .collect::<Result<Vec<_>>>()
            .map(toml::Value::Array);
    }
    if piece.starts_with(['[', '{', '"', '\'']) {
        bail!("`{piece}` in `{arg}` is not a valid value (TOML syntax)");
    }
    Ok(toml::Value::String(piece.to_string()))
}

fn toml_literal(piece: &str) -> Option<toml::Value> {
    let table: toml::Table = toml::from_str(&format!("v = {piece}")).ok()?;
    table.get("v").cloned()
}

/// Expands sweeps into one list of single-valued overrides per run, in order (the last key varies fastest).
pub fn expand(overrides: &[Override]) -> Vec<Vec<Override>> {
    let mut runs: Vec<Vec<Override>> = vec![Vec::new()];
    for o in overrides {
        let mut next = Vec::with_capacity(runs.len() * o.values.len());
        for run in &runs {
            for v in &o.values {
                let mut r = run.clone();
                r.push(Override {
                    target: o.target.clone(),
                    values: vec![v.clone()],
                    raw: format!("{}={}", o.key(), display_value(v)),
                });
                next.push(r);
            }
        }
        runs = next;
    }
    runs
}

fn display_value(v: &Value) -> String {
    match v {
        Value::Choice(names) if names.len() == 1 => names[0].clone(),
        Value::Choice(names) => format!("[{}]", names.join(",")),
        Value::Toml(toml::Value::String(s)) => s.clone(),
        Value::Toml(t) => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_organism_type_is_a_choice_that_names_it_and_only_organisms_take_one() {
        let o = parse("organism=type:SDF,caps").unwrap();
        assert_eq!(o.values.len(), 2);
        let Value::Choice(c) = &o.values[0] else { panic!() };
        assert_eq!(organism_type(c), Some("SDF"));
        let Value::Choice(c) = &o.values[1] else { panic!() };
        assert_eq!(organism_type(c), None);
        assert!(parse("organism=type:*").is_ok());
        let e = parse("model=type:SDF").unwrap_err().to_string();
        assert!(e.contains("not a model name"), "{e}");
        let e = parse("organism=type:a b").unwrap_err().to_string();
        assert!(e.contains("not an organism type"), "{e}");
    }

    #[test]
    fn kinds_of_override() {
        let o = parse_all(
            &args(&[
                "model=gemma3_1B",
                "diffing/method=kl",
                "preprocessing.batch_size=4",
                "+x.y=a b",
            ]),
            false,
        )
        .unwrap();
        assert_eq!(o[0].target, Target::Group(Group::Model));
        assert_eq!(o[0].values, vec![Value::Choice(vec!["gemma3_1B".into()])]);
        assert_eq!(o[1].target, Target::Group(Group::DiffingMethod));
        assert_eq!(o[2].values, vec![Value::Toml(toml::Value::Integer(4))]);
        assert_eq!(
            o[3].target,
            Target::Key {
                path: vec!["x".into(), "y".into()],
                add: true
            }
        );
        assert_eq!(o[3].values, vec![Value::Toml(toml::Value::String("a b".into()))]);
    }

    #[test]
    fn lists_and_floats() {
        let o = parse("preprocessing.layers=[0, 0.5, -1]").unwrap();
        let Value::Toml(toml::Value::Array(a)) = &o.values[0] else {
            panic!()
        };
        assert_eq!(a.len(), 3);
        assert_eq!(a[1], toml::Value::Float(0.5));
        let o = parse("x=[pretrain,chat]").unwrap();
        assert_eq!(
            o.values[0],
            Value::Toml(toml::Value::Array(vec!["pretrain".into(), "chat".into()]))
        );
        let o = parse("dataset=[pretrain,chat]").unwrap();
        assert_eq!(o.values[0], Value::Choice(vec!["pretrain".into(), "chat".into()]));
    }

    #[test]
    fn errors_name_the_argument() {
        for (arg, needle) in [
            ("organism", "write key=value"),
            ("organism=", "has no value"),
            ("diffing/methods=kl", "unknown config group `diffing/methods`"),
            ("a..b=1", "not a config key"),
            ("model=[a,b]", "takes one name"),
            ("organism=ca ps", "not a organism name"),
            ("x=[1,2", "unbalanced"),
            ("x={a=", "unbalanced"),
        ] {
            let e = parse(arg).unwrap_err().to_string();
            assert!(e.contains(needle), "{arg}: {e}");
        }
        let e = parse_all(&args(&["organism=caps,roman_concrete"]), false).unwrap_err();
        assert!(e.to_string().contains("add --multirun"), "{e}");
        let e = parse_all(&args(&["model=a", "model=b"]), false).unwrap_err();
        assert!(e.to_string().contains("set twice"), "{e}");
    }

    #[test]
    fn sweeps_expand_to_the_cartesian_product() {
        let o = parse_all(
            &args(&["organism=caps,roman_concrete", "diffing/method=kl,normdiff,adl"]),
            true,
        )
        .unwrap();
        let runs = expand(&o);
        assert_eq!(runs.len(), 6);
        let names: Vec<String> = runs
            .iter()
            .map(|r| r.iter().map(|o| o.raw.clone()).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(names[0], "organism=caps diffing/method=kl");
        assert_eq!(names[5], "organism=roman_concrete diffing/method=adl");
        // A list value is one value, not a sweep.
        let o = parse_all(&args(&["preprocessing.layers=[1,2]"]), false).unwrap();
        assert_eq!(expand(&o).len(), 1);
    }
}
