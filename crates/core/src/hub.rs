//! Files of a Hugging Face repo (model, adapter or dataset) from the local hub cache (`HF_HUB_CACHE`,
//! `$HF_HOME/hub`, `~/.cache/huggingface/hub`), downloaded only when missing and not offline
//! (`HF_HUB_OFFLINE=1`). The one place that knows the cache's layout: [`cached_snapshot`] finds a revision's
//! snapshot for every caller (models, adapters, datasets); `diffsql_model::load` adds what a model checkpoint
//! must hold.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::{Repo, RepoType};

/// Whether `s` has the shape of a Hugging Face repo id: `org/name`, both parts non-empty, no whitespace,
/// not a relative path.
pub fn is_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && !p.contains(char::is_whitespace)) && !s.starts_with('.')
}

/// The hub cache directory this process uses.
pub fn hub_cache_dir() -> PathBuf {
    for var in ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(v);
        }
    }
    hf_hub::Cache::from_env().path().clone()
}

/// Whether `HF_HUB_OFFLINE` asks for the cache only.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn kind_name(kind: RepoType) -> &'static str {
    match kind {
        RepoType::Model => "model",
        RepoType::Dataset => "dataset",
        RepoType::Space => "space",
    }
}

/// The files of `repo` whose repo-relative path `wanted` accepts, sorted by path.
pub fn repo_files(repo: &str, kind: RepoType, revision: &str, wanted: &dyn Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    repo_files_in(&hub_cache_dir(), repo, kind, revision, offline(), wanted)
}

/// [`repo_files`] with the cache directory and offline mode given.
pub fn repo_files_in(
    cache_dir: &Path,
    repo: &str,
    kind: RepoType,
    revision: &str,
    offline: bool,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<Vec<PathBuf>> {
    let r = Repo::with_revision(repo.to_string(), kind, revision.to_string());
    let cached = cached_snapshot(cache_dir, repo, kind, revision)
        .map(|dir| files_under(&dir, wanted))
        .transpose()?
        .filter(|files| !files.is_empty());
    if let Some(files) = cached {
        return Ok(files);
    }
    let what = kind_name(kind);
    if offline {
        bail!(
            "{what} {repo}@{revision} has no matching files in the Hugging Face cache {} and HF_HUB_OFFLINE is set; download it where there is network, or point the config at a local path",
            cache_dir.display()
        );
    }
    let api_repo = client(cache_dir, r)?;
    let info = api_repo.info().with_context(|| {
        format!("cannot list {what} {repo}@{revision} (no network? set HF_HUB_OFFLINE=1 to use only the cache)")
    })?;
    let mut out = Vec::new();
    for s in info.siblings.iter().filter(|s| wanted(&s.rfilename)) {
        out.push(
            api_repo
                .get(&s.rfilename)
                .with_context(|| format!("cannot download {} of {repo}@{revision}", s.rfilename))?,
        );
    }
    if out.is_empty() {
        bail!("{what} {repo}@{revision} has no files of the kind needed");
    }
    out.sort();
    Ok(out)
}

/// A hub client for `repo` that downloads into `cache_dir`.
pub fn client(cache_dir: &Path, repo: Repo) -> Result<hf_hub::api::sync::ApiRepo> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(cache_dir.to_path_buf())
        .build()
        .context("cannot start the Hugging Face client")?;
    Ok(api.repo(repo))
}

/// The snapshot directory of `repo` at `revision` in the cache, if the revision is known there (a branch or
/// tag through `refs/`, or a commit hash).
pub fn cached_snapshot(cache_dir: &Path, repo: &str, kind: RepoType, revision: &str) -> Option<PathBuf> {
    let root = cache_dir.join(Repo::with_revision(repo.to_string(), kind, revision.to_string()).folder_name());
    let commit = std::fs::read_to_string(root.join("refs").join(revision))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    let dir = root.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

fn files_under(dir: &Path, wanted: &dyn Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                if wanted(&rel.to_string_lossy()) {
                    out.push(path);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// An adapter's hub id split into the repo and the folder in it that holds the adapter: `org/repo`
/// (the repo's root) or `org/repo/sub/folder` (the toolkit's three-part ids, e.g. one repo of many personas).
pub fn split_adapter_id(spec: &str) -> Option<(&str, &str)> {
    let mut parts = spec.splitn(3, '/');
    let (org, name) = (parts.next()?, parts.next()?);
    let repo = &spec[..org.len() + 1 + name.len()];
    let folder = parts.next().unwrap_or("").trim_end_matches('/');
    let folder_ok = folder.split('/').all(|p| !p.is_empty() && p != "." && p != "..") || folder.is_empty();
    (is_repo_id(repo) && folder_ok && !folder.contains(char::is_whitespace)).then_some((repo, folder))
}

/// The files of a PEFT LoRA adapter.
const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

/// A PEFT LoRA adapter: a local directory, or a hub id (`org/repo` or `org/repo/subfolder`) whose adapter
/// files are found in the hub cache or fetched.
pub fn resolve_adapter(spec: &str, revision: &str) -> Result<PathBuf> {
    resolve_adapter_in(&hub_cache_dir(), spec, revision, offline())
}

/// [`resolve_adapter`] with the cache directory and offline mode given.
pub fn resolve_adapter_in(cache_dir: &Path, spec: &str, revision: &str, offline: bool) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let Some((repo, folder)) = split_adapter_id(spec) else {
        bail!("adapter {spec:?} is neither an existing directory nor a Hugging Face id like org/name or org/name/subfolder");
    };
    let in_folder = |f: &str| -> String {
        if folder.is_empty() {
            f.to_string()
        } else {
            format!("{folder}/{f}")
        }
    };
    let wanted: Vec<String> = ADAPTER_FILES.iter().map(|f| in_folder(f)).collect();
    let snapshot = cached_snapshot(cache_dir, repo, RepoType::Model, revision);
    if let Some(dir) = &snapshot {
        let adapter = dir.join(folder);
        if ADAPTER_FILES.iter().all(|f| adapter.join(f).is_file()) {
            return Ok(adapter);
        }
    }
    if offline {
        if let Some(dir) = &snapshot {
            let held = adapter_folders(&files_under(dir, &|f| f.ends_with("adapter_config.json"))?, dir);
            bail!(
                "adapter {spec}@{revision}: the Hugging Face cache {} holds {repo} but no adapter in {}; {}",
                cache_dir.display(),
                if folder.is_empty() {
                    "its root".to_string()
                } else {
                    format!("`{folder}`")
                },
                held_adapters(&held)
            );
        }
        bail!(
            "adapter {repo}@{revision} is not in the Hugging Face cache {} and HF_HUB_OFFLINE is set; download it where there is network, or point the config at a local directory",
            cache_dir.display()
        );
    }
    let api_repo = client(
        cache_dir,
        Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string()),
    )?;
    let info = api_repo.info().with_context(|| {
        format!("cannot list adapter repo {repo}@{revision} (no network? set HF_HUB_OFFLINE=1 to use only the cache)")
    })?;
    let names: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    if !wanted.iter().all(|w| names.contains(&w.as_str())) {
        let held: Vec<String> = names
            .iter()
            .filter_map(|n| n.strip_suffix("adapter_config.json"))
            .map(|p| p.trim_end_matches('/').to_string())
            .collect();
        bail!(
            "adapter {spec}@{revision}: {repo} has no adapter in {}; {}",
            if folder.is_empty() {
                "its root".to_string()
            } else {
                format!("`{folder}`")
            },
            held_adapters(&held)
        );
    }
    let mut config = PathBuf::new();
    for w in &wanted {
        let got = api_repo
            .get(w)
            .with_context(|| format!("cannot download {w} of {repo}@{revision}"))?;
        if w.ends_with("adapter_config.json") {
            config = got;
        }
    }
    Ok(config.parent().expect("a file in a snapshot").to_path_buf())
}

/// The folders (relative to `root`, "" for the root) that hold the given adapter_config.json files.
fn adapter_folders(configs: &[PathBuf], root: &Path) -> Vec<String> {
    configs
        .iter()
        .filter_map(|c| c.parent()?.strip_prefix(root).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

fn held_adapters(folders: &[String]) -> String {
    let mut shown: Vec<String> = folders
        .iter()
        .map(|f| {
            if f.is_empty() {
                "the root".to_string()
            } else {
                f.clone()
            }
        })
        .collect();
    shown.sort();
    match shown.len() {
        0 => "it holds no adapter (adapter_config.json) at all".into(),
        _ => format!("its adapters are in: {} (write org/repo/FOLDER)", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapter_ids_split_into_repo_and_folder() {
        assert_eq!(split_adapter_id("org/repo"), Some(("org/repo", "")));
        assert_eq!(
            split_adapter_id("maius/llama-3.1-8b-it-personas/sarcasm"),
            Some(("maius/llama-3.1-8b-it-personas", "sarcasm"))
        );
        assert_eq!(split_adapter_id("org/repo/a/b/"), Some(("org/repo", "a/b")));
        assert_eq!(split_adapter_id("org/repo/../x"), None);
        assert_eq!(split_adapter_id("org"), None);
        assert_eq!(split_adapter_id("./org/x"), None);
    }

    fn snapshot(cache: &Path, repo: &str, files: &[&str]) {
        let root = cache.join(format!("models--{}", repo.replace('/', "--")));
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(root.join("refs/main"), "abc123").unwrap();
        for f in files {
            let p = root.join("snapshots/abc123").join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "{}").unwrap();
        }
    }

    #[test]
    fn an_adapter_in_a_subfolder_resolves_from_the_cache_and_a_missing_one_lists_the_folders() {
        let cache = tempfile::tempdir().unwrap();
        snapshot(
            cache.path(),
            "maius/personas",
            &[
                "sarcasm/adapter_config.json",
                "sarcasm/adapter_model.safetensors",
                "humor/adapter_config.json",
                "humor/adapter_model.safetensors",
                "README.md",
            ],
        );
        let dir = resolve_adapter_in(cache.path(), "maius/personas/sarcasm", "main", true).unwrap();
        assert!(dir.ends_with("snapshots/abc123/sarcasm"), "{}", dir.display());
        let e = resolve_adapter_in(cache.path(), "maius/personas/goodness", "main", true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no adapter in `goodness`") && e.contains("its adapters are in: humor, sarcasm"),
            "{e}"
        );
        let e = resolve_adapter_in(cache.path(), "maius/personas", "main", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no adapter in its root"), "{e}");
        let e = resolve_adapter_in(cache.path(), "maius/other/x", "main", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("maius/other@main is not in the Hugging Face cache"), "{e}");
    }
}
