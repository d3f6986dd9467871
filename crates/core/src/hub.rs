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

/// A PEFT LoRA adapter: a local directory, or a hub repo id whose adapter files are fetched.
pub fn resolve_adapter(spec: &str, revision: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if !is_repo_id(spec) {
        bail!("adapter {spec:?} is neither an existing directory nor a Hugging Face repo id like org/name");
    }
    let files = repo_files(spec, RepoType::Model, revision, &|f| {
        f == "adapter_config.json" || f == "adapter_model.safetensors"
    })?;
    if files.len() != 2 {
        bail!("adapter {spec}@{revision} lacks adapter_config.json or adapter_model.safetensors");
    }
    Ok(files[0].parent().expect("a file in a snapshot").to_path_buf())
}
