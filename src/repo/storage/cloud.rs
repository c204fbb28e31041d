//! The object-storage backend: S3 and S3-compatible stores, Azure Blob Storage and
//! Google Cloud Storage, through the `object_store` crate.
//!
//! Crash safety: every object is written by one PUT, which the service makes visible
//! whole or not at all, so nothing half-written is ever listed or read, and there are
//! no multipart uploads to leave behind. `put_new` is a conditional create
//! (`If-None-Match: *` on S3 and Azure, `ifGenerationMatch=0` on GCS): of two writers
//! racing for a key exactly one wins, and nothing is overwritten. Transient failures
//! (5xx, timeouts, dropped connections, broken response bodies) are retried with
//! backoff for `retry_timeout`; an error that remains names the object.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::client::HttpError;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};

use super::cache::ObjectCache;
use super::{ObjectMeta, Storage, TooShort, aws_files, check_key};
use crate::config::{ObjectService, ObjectUrl};

/// The runtime the blocking [`Storage`] calls run their requests on. Callers block on
/// it from their own threads (backup workers, the pack writer), so requests from many
/// threads are in flight at once.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("pgkeep-io")
        .enable_all()
        .build()
        .expect("cannot start the I/O runtime")
});

/// Retries for transient failures for `timeout` (by default two minutes, so a short
/// outage or a restarted endpoint does not fail a backup).
fn retry_config(timeout: Duration) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout: timeout,
    }
}

/// A repository in a bucket (or container), under a key prefix.
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    url: ObjectUrl,
    retry_timeout: Duration,
    cache: Option<ObjectCache>,
}

impl ObjectStorage {
    /// A client for `url` with `options` (the `object_store` key names, e.g. `endpoint`,
    /// `region`, `access_key_id`, `allow_http`) over what the environment sets.
    pub fn open(
        url: &ObjectUrl,
        options: &BTreeMap<String, String>,
        retry_timeout: Duration,
        cache_root: Option<&std::path::Path>,
    ) -> Result<ObjectStorage> {
        // One process-wide TLS provider: ring, chosen at build time (see Cargo.toml).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = build_store(url, options, retry_config(retry_timeout))
            .with_context(|| format!("cannot set up the client for repository {url}"))?;
        Ok(ObjectStorage {
            store,
            url: url.clone(),
            retry_timeout,
            cache: ObjectCache::for_repository(cache_root, &url.to_string()),
        })
    }

    fn path(&self, key: &str) -> Result<Path> {
        check_key(key)?;
        let full = if self.url.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.url.prefix)
        };
        Path::parse(&full).map_err(|e| anyhow!("refusing repository key '{key}': {e}"))
    }

    /// The repository key of a listed object.
    fn key_of(&self, path: &Path) -> String {
        let full = path.as_ref();
        match self.url.prefix.as_str() {
            "" => full.to_string(),
            prefix => full
                .strip_prefix(prefix)
                .and_then(|k| k.strip_prefix('/'))
                .unwrap_or(full)
                .to_string(),
        }
    }

    /// Runs a request until it succeeds, fails for good, or `retry_timeout` has passed.
    /// The client retries what it knows to be safe to repeat; a connection cut while a
    /// request or its reply was under way it leaves to us, and repeating is safe here:
    /// `put` stores the same bytes again, a create that had happened is found (and its
    /// caller compares), reads and deletes are idempotent.
    fn run<T, F>(&self, request: impl Fn() -> F) -> object_store::Result<T>
    where
        F: Future<Output = object_store::Result<T>>,
    {
        let start = Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            match RUNTIME.block_on(request()) {
                Err(e) if is_transport(&e) && start.elapsed() + pause < self.retry_timeout => {
                    tracing::debug!("{}: {e}; trying again in {pause:?}", self.url);
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                done => return done,
            }
        }
    }

    /// Drops the cached copy of `key`, which is being replaced or removed (a mended
    /// index replaces a damaged one).
    fn forget_cached(&self, key: &str) {
        if let Some(cache) = &self.cache {
            cache.forget(key);
        }
    }

    /// The error of a request on `key` that failed after its retries.
    fn failed(&self, what: &str, key: &str, e: object_store::Error) -> anyhow::Error {
        anyhow!("cannot {what} {}/{key}: {e}", self.url)
    }
}

fn build_store(
    url: &ObjectUrl,
    options: &BTreeMap<String, String>,
    retry: RetryConfig,
) -> Result<Arc<dyn ObjectStore>> {
    let unknown = |key: &str, e: object_store::Error| {
        anyhow!(
            "repository.options.{key} is not a setting of the {} client ({e}); see the object_store crate's config keys",
            url.service.scheme()
        )
    };
    // The three builders share these methods but no trait.
    macro_rules! with_options {
        ($builder:expr) => {{
            let mut builder = $builder.with_retry(retry.clone());
            for (key, value) in options {
                let key_name = key.parse().map_err(|e| unknown(key, e))?;
                builder = builder.with_config(key_name, value);
            }
            builder
        }};
    }
    Ok(match url.service {
        ObjectService::S3 => {
            let mut builder =
                with_options!(AmazonS3Builder::from_env().with_bucket_name(&url.bucket));
            if builder
                .get_config_value(&AmazonS3ConfigKey::AccessKeyId)
                .is_none()
            {
                builder = aws_files::apply(builder)?;
            }
            Arc::new(builder.build()?)
        }
        ObjectService::Azure => {
            let builder =
                with_options!(MicrosoftAzureBuilder::from_env().with_container_name(&url.bucket));
            Arc::new(builder.build()?)
        }
        ObjectService::Gcs => {
            let builder =
                with_options!(GoogleCloudStorageBuilder::from_env().with_bucket_name(&url.bucket));
            Arc::new(builder.build()?)
        }
    })
}

/// Whether `e` is a failure of the connection rather than an answer of the service.
fn is_transport(e: &object_store::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<HttpError>().is_some() {
            return true;
        }
        source = s.source();
    }
    false
}

impl Storage for ObjectStorage {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.forget_cached(key);
        let path = self.path(key)?;
        let payload = PutPayload::from(data.to_vec());
        self.run(|| self.store.put(&path, payload.clone()))
            .map_err(|e| self.failed("store", key, e))?;
        Ok(())
    }

    fn put_new(&self, key: &str, data: &[u8]) -> Result<bool> {
        let path = self.path(key)?;
        let payload = PutPayload::from(data.to_vec());
        let create = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.run(|| self.store.put_opts(&path, payload.clone(), create())) {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e @ object_store::Error::NotImplemented { .. }) => bail!(
                "{} cannot create {key} only if it is absent ({e}); pgkeep needs conditional writes: enable them (repository.options.conditional_put = \"etag\" on S3) or use a store that has them",
                self.url
            ),
            Err(e) => Err(self.failed("store", key, e)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        let read = || async {
            let result = self.store.get(&path).await?;
            result.bytes().await
        };
        match self.run(read) {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed("read", key, e)),
        }
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        let end = offset + len as u64;
        let too_short = || {
            anyhow::Error::new(TooShort {
                key: key.to_string(),
            })
        };
        match self.run(|| self.store.get_range(&path, offset..end)) {
            Ok(bytes) if bytes.len() == len => Ok(bytes.to_vec()),
            Ok(_) => Err(too_short()),
            Err(e) => match self.run(|| self.store.head(&path)) {
                Ok(meta) if meta.size < end => Err(too_short()),
                _ => Err(self.failed("read", key, e)),
            },
        }
    }

    fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectMeta>> {
        let path = self.path(prefix)?;
        let offset = (!after.is_empty()).then(|| self.path(after)).transpose()?;
        let listed: Vec<object_store::ObjectMeta> = self
            .run(|| match &offset {
                None => self.store.list(Some(&path)).try_collect(),
                Some(offset) => self
                    .store
                    .list_with_offset(Some(&path), offset)
                    .try_collect(),
            })
            .map_err(|e| self.failed("list", prefix, e))?;
        let mut out: Vec<ObjectMeta> = listed
            .into_iter()
            .map(|m| ObjectMeta {
                key: self.key_of(&m.location),
                size: m.size,
                modified: m.last_modified.timestamp(),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn exists(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        match self.run(|| self.store.head(&path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.failed("look up", key, e)),
        }
    }

    fn get_immutable(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let Some(cache) = &self.cache else {
            return self.get(key);
        };
        if let Some(cached) = cache.get(key) {
            return Ok(Some(cached));
        }
        let fetched = self.get(key)?;
        if let Some(bytes) = &fetched {
            cache.put(key, bytes);
        }
        Ok(fetched)
    }

    fn refresh_immutable(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.forget_cached(key);
        self.get_immutable(key)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.forget_cached(key);
        let path = self.path(key)?;
        match self.run(|| self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("delete", key, e)),
        }
    }

    fn parallel_puts(&self) -> usize {
        3
    }

    /// Small GETs wait almost only on the round trip.
    fn parallel_gets(&self) -> usize {
        16
    }

    fn describe(&self) -> String {
        self.url.to_string()
    }

    /// Nothing to do: objects are written by single PUTs, which leave nothing behind
    /// when they fail.
    fn remove_interrupted_writes(&self, _prefix: &str, _min_age: Duration) -> Result<usize> {
        Ok(0)
    }
}
