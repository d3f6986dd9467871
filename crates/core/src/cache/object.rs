//! A cache on an S3-compatible object store (`cache_dir=s3://bucket/prefix`), through the `object_store` crate
//! and the standard AWS variables. The rules are the disk's: a partition is visible only through its manifest,
//! which is put after every data object is complete; readers fetch byte ranges (a footer, the column chunks a
//! scan needs), never a whole file into a temporary copy; one writer per partition, across hosts, through a
//! lock object created with a conditional put.
//!
//! `object_store` is async and diffsql's readers are plain iterators that DataFusion drives from its own
//! runtime, so every request runs on one small runtime of this module's and the caller waits for it (which is
//! allowed from inside another runtime, unlike `block_on`).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientConfigKey, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion, WriteMultipart,
};

/// The URL scheme of an object-store cache.
pub const S3_SCHEME: &str = "s3://";

/// Parts of a large file uploaded at once, and their size.
const UPLOAD_PART_BYTES: usize = 16 << 20;
const UPLOAD_CONCURRENCY: usize = 4;

/// For tests of interrupted uploads: the process aborts (as under kill -9) once this many objects are uploaded.
pub const CRASH_AFTER_UPLOADS_VAR: &str = "DIFFSQL_CRASH_AFTER_UPLOADS";

/// Counts an upload, and aborts the process if [`CRASH_AFTER_UPLOADS_VAR`] says this is the last.
fn count_upload() {
    static UPLOADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static LIMIT: OnceLock<Option<usize>> = OnceLock::new();
    let limit = LIMIT.get_or_init(|| std::env::var(CRASH_AFTER_UPLOADS_VAR).ok()?.parse().ok());
    let done = UPLOADS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    if limit.is_some_and(|l| done >= l) {
        eprintln!("{CRASH_AFTER_UPLOADS_VAR}: aborting after {done} uploads");
        std::process::abort();
    }
}

/// Whether `location` (a `cache_dir` value) names an object-store cache.
pub fn is_object_url(location: &str) -> bool {
    location.starts_with(S3_SCHEME)
}

/// A cache under one prefix of one bucket.
#[derive(Debug)]
pub struct ObjectCache {
    /// `s3://bucket/prefix`, without a trailing `/`.
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// The endpoint requests go to, for messages.
    endpoint: String,
}

/// The runtime every object-store request runs on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("diffsql-object-store")
            .enable_all()
            .build()
            .expect("a tokio runtime for object-store requests")
    })
}

/// Runs `future` on the object-store runtime and waits for it, from any thread (also one of another runtime).
pub fn wait<T: Send + 'static>(future: impl std::future::Future<Output = T> + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv().expect("an object-store request task ended without an answer")
}

impl ObjectCache {
    /// The cache at `url` (`s3://bucket/prefix`), with credentials, region and endpoint from the standard AWS
    /// variables. Nothing is requested yet.
    pub fn open(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix(S3_SCHEME)
            .with_context(|| format!("{url} is not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("{url} names no bucket: write cache_dir=s3://BUCKET/PREFIX");
        }
        let prefix = prefix.trim_matches('/');
        let url = if prefix.is_empty() {
            format!("{S3_SCHEME}{bucket}")
        } else {
            format!("{S3_SCHEME}{bucket}/{prefix}")
        };
        // Fail fast: the crate's default retries an unreachable endpoint for three minutes.
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(15),
            ..RetryConfig::default()
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry)
            .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), "5s");
        if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region("us-east-1");
        }
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .unwrap_or_else(|| "AWS (no AWS_ENDPOINT_URL set)".to_string());
        let store = builder.build().map_err(|e| {
            anyhow::anyhow!("cannot open {url}: {e}; check AWS_ENDPOINT_URL, AWS_REGION and AWS_ALLOW_HTTP")
        })?;
        Ok(Self {
            url,
            store: Arc::new(store),
            prefix: ObjectPath::from(prefix),
            endpoint,
        })
    }

    /// The cache at `url`, opened once per process: every layout and every plan a worker receives that names
    /// it share one client.
    pub fn shared(url: &str) -> Result<Arc<Self>> {
        static OPEN: OnceLock<std::sync::Mutex<HashMap<String, Arc<ObjectCache>>>> = OnceLock::new();
        let mut open = OPEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = open.get(url) {
            return Ok(Arc::clone(c));
        }
        let cache = Arc::new(Self::open(url)?);
        open.insert(url.to_string(), Arc::clone(&cache));
        Ok(cache)
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object at `relative` (a `/`-separated path inside the cache).
    pub fn path(&self, relative: &str) -> ObjectPath {
        let mut p = self.prefix.clone();
        for part in relative.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// The URL of an object, for messages.
    pub fn url_of(&self, path: &ObjectPath) -> String {
        let bucket = self.url[S3_SCHEME.len()..].split('/').next().unwrap_or_default();
        format!("{S3_SCHEME}{bucket}/{path}")
    }

    /// A one-line error for a failed request on `path`, naming the URL and what to set.
    fn error(&self, what: &str, path: &ObjectPath, e: object_store::Error) -> anyhow::Error {
        let target = self.url_of(path);
        let text = e.to_string();
        let hint = if text.contains("NoSuchBucket") {
            format!(
                "the bucket does not exist at {}: create it, or fix cache_dir",
                self.endpoint
            )
        } else if matches!(
            e,
            object_store::Error::Unauthenticated { .. } | object_store::Error::PermissionDenied { .. }
        ) || text.contains("InvalidAccessKeyId")
            || text.contains("SignatureDoesNotMatch")
            || text.contains("AccessDenied")
        {
            "the store refused the credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_string()
        } else if text.contains("error sending request")
            || text.contains("connect")
            || text.contains("dns error")
            || text.contains("timed out")
        {
            format!(
                "cannot reach the store at {}: start it, or set AWS_ENDPOINT_URL (and AWS_ALLOW_HTTP=true for http://)",
                self.endpoint
            )
        } else {
            format!("the store at {} answered: {}", self.endpoint, first_line(&text))
        };
        anyhow::anyhow!("cannot {what} {target}: {hint}")
    }

    /// Runs `request` with the store and `path` on the object-store runtime, and waits for its answer.
    fn request<T, F>(
        &self,
        path: &ObjectPath,
        request: impl FnOnce(Arc<dyn ObjectStore>, ObjectPath) -> F,
    ) -> object_store::Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = object_store::Result<T>> + Send + 'static,
    {
        wait(request(Arc::clone(&self.store), path.clone()))
    }

    /// The whole object, or `None` if there is none.
    pub fn get_optional(&self, relative: &str) -> Result<Option<Bytes>> {
        let path = self.path(relative);
        match self.request(&path, |store, p| async move { store.get(&p).await?.bytes().await }) {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("read", &path, e)),
        }
    }

    /// Several whole objects, fetched concurrently, in the order asked.
    pub fn get_many(&self, paths: Vec<ObjectPath>) -> Result<Vec<Bytes>> {
        let store = Arc::clone(&self.store);
        let fetched = wait(async move {
            futures::stream::iter(paths.into_iter().map(|p| {
                let store = Arc::clone(&store);
                async move {
                    let got = async { store.get(&p).await?.bytes().await }.await;
                    got.map_err(|e| (p, e))
                }
            }))
            .buffered(16)
            .try_collect::<Vec<_>>()
            .await
        });
        fetched.map_err(|(p, e)| self.error("read", &p, e))
    }

    /// One byte range of an object.
    pub fn get_range(&self, path: &ObjectPath, range: Range<u64>) -> Result<Bytes> {
        self.request(path, |store, p| async move { store.get_range(&p, range).await })
            .map_err(|e| self.error("read", path, e))
    }

    /// Byte ranges of an object, fetched concurrently (adjacent ranges in one request).
    pub fn get_ranges(&self, path: &ObjectPath, ranges: Vec<Range<u64>>) -> Result<Vec<Bytes>> {
        self.request(path, |store, p| async move { store.get_ranges(&p, &ranges).await })
            .map_err(|e| self.error("read", path, e))
    }

    /// Feeds an object's bytes to `sink` as they arrive (hashing a file without keeping it).
    pub fn stream(&self, path: &ObjectPath, mut sink: impl FnMut(&[u8]) + Send + 'static) -> Result<()> {
        self.request(path, |store, p| async move {
            let mut stream = store.get(&p).await?.into_stream();
            while let Some(chunk) = stream.next().await {
                sink(&chunk?);
            }
            Ok(())
        })
        .map_err(|e| self.error("read", path, e))
    }

    /// Puts `bytes` at `relative`, replacing any object there.
    pub fn put(&self, relative: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(relative);
        self.request(
            &path,
            |store, p| async move { store.put(&p, PutPayload::from(bytes)).await },
        )
        .map(|_| ())
        .map_err(|e| self.error("write", &path, e))
    }

    /// Uploads the local file `file` to `relative`: one request for a small file, parts for a large one.
    /// The object appears whole when the upload completes, or not at all.
    pub fn upload(&self, file: &std::path::Path, relative: &str) -> Result<()> {
        self.upload_object(file, relative)?;
        count_upload();
        Ok(())
    }

    fn upload_object(&self, file: &std::path::Path, relative: &str) -> Result<()> {
        let len = std::fs::metadata(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .len();
        if len as usize <= UPLOAD_PART_BYTES {
            let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            return self.put(relative, bytes);
        }
        let path = self.path(relative);
        let local = file.to_path_buf();
        self.request(&path, |store, p| async move {
            use std::io::Read;
            let upload = store.put_multipart(&p).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_BYTES);
            let mut f = std::fs::File::open(&local).map_err(|e| generic(e.into()))?;
            let mut buf = vec![0u8; UPLOAD_PART_BYTES];
            loop {
                let n = f.read(&mut buf).map_err(|e| generic(e.into()))?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(UPLOAD_CONCURRENCY).await?;
                writer.write(&buf[..n]);
            }
            writer.finish().await.map(|_| ())
        })
        .map_err(|e| self.error("upload to", &path, e))
    }

    /// Removes an object (none there is not an error).
    pub fn delete(&self, path: &ObjectPath) -> Result<()> {
        match self.request(path, |store, p| async move { store.delete(&p).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", path, e)),
        }
    }

    /// Every object under `relative` (recursively), with its size and ETag.
    pub fn list(&self, relative: &str) -> Result<Vec<ObjectMeta>> {
        let path = self.path(relative);
        self.request(&path, |store, p| async move {
            store.list(Some(&p)).try_collect::<Vec<_>>().await
        })
        .map_err(|e| self.error("list", &path, e))
    }

    /// The objects and the "directories" directly in `relative`.
    fn list_level(&self, relative: &str) -> Result<object_store::ListResult> {
        let path = self.path(relative);
        self.request(
            &path,
            |store, p| async move { store.list_with_delimiter(Some(&p)).await },
        )
        .map_err(|e| self.error("list", &path, e))
    }

    /// The objects directly in `relative`, by file name.
    pub fn list_dir(&self, relative: &str) -> Result<HashMap<String, ObjectMeta>> {
        Ok(self
            .list_level(relative)?
            .objects
            .into_iter()
            .filter_map(|m| m.location.filename().map(|n| (n.to_string(), m.clone())))
            .collect())
    }

    /// Whether nothing lies under the cache's prefix.
    pub fn is_empty(&self) -> Result<bool> {
        let listed = self.list_level("")?;
        Ok(listed.objects.is_empty() && listed.common_prefixes.is_empty())
    }

    /// Checks that the bucket can be reached and listed with these credentials (one request), so a run stops
    /// before any model is loaded.
    pub fn probe(&self) -> Result<()> {
        self.list_dir("").map(|_| ())
    }

    /// Creates `relative` holding `body` only if no object is there: `Ok(false)` if one is.
    pub fn create(&self, relative: &str, body: Vec<u8>) -> Result<bool> {
        let path = self.path(relative);
        let options = PutOptions::from(PutMode::Create);
        match self.request(&path, |store, p| async move {
            store.put_opts(&p, PutPayload::from(body), options).await
        }) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.error("create", &path, e)),
        }
    }

    /// Replaces `relative` with `body` only if it is still the version with `e_tag`: `Ok(false)` if another
    /// writer replaced or removed it first.
    pub fn replace_if(&self, relative: &str, e_tag: String, body: Vec<u8>) -> Result<bool> {
        let path = self.path(relative);
        let options = PutOptions::from(PutMode::Update(UpdateVersion {
            e_tag: Some(e_tag),
            version: None,
        }));
        match self.request(&path, |store, p| async move {
            store.put_opts(&p, PutPayload::from(body), options).await
        }) {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::NotFound { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Ok(false),
            Err(e) => Err(self.error("replace", &path, e)),
        }
    }

    /// The object's metadata, or `None` if there is none.
    pub fn head(&self, relative: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(relative);
        match self.request(&path, |store, p| async move { store.head(&p).await }) {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("read", &path, e)),
        }
    }
}

fn generic(source: Box<dyn std::error::Error + Send + Sync>) -> object_store::Error {
    object_store::Error::Generic {
        store: "local file",
        source,
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        let c = ObjectCache::open("s3://bucket/some/prefix/").unwrap();
        assert_eq!(c.url(), "s3://bucket/some/prefix");
        assert_eq!(
            c.path("tokens/model=m/_manifest.json").as_ref(),
            "some/prefix/tokens/model=m/_manifest.json"
        );
        assert_eq!(c.url_of(&c.path("a/b")), "s3://bucket/some/prefix/a/b");
        let root = ObjectCache::open("s3://bucket").unwrap();
        assert_eq!(root.path("a").as_ref(), "a");
        let e = ObjectCache::open("s3:///x").unwrap_err();
        assert!(e.to_string().contains("names no bucket"), "{e}");
        assert!(is_object_url("s3://b/p") && !is_object_url("/data/s3"));
    }

    #[test]
    fn an_unreachable_store_is_one_line_naming_the_url_and_the_variable() {
        // Port 9 on loopback: nothing listens there, the connection is refused at once.
        std::env::set_var("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        std::env::set_var("AWS_ACCESS_KEY_ID", "x");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "y");
        let c = ObjectCache::open("s3://bucket/p").unwrap();
        let e = format!("{:#}", c.probe().unwrap_err());
        assert!(e.contains("s3://bucket/p") && e.contains("AWS_ENDPOINT_URL"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}
