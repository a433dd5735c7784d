//! The helper's durable state in S3-compatible object storage (`run --object-store
//! s3://BUCKET/PREFIX`), so that losing the helper's disk loses nothing.
//!
//! Object layout under `PREFIX/` (the data directory's, see the module doc of `store`):
//!
//! ```text
//! helper.json                          cluster identity + bootstrap positions; written last
//!                                      at bootstrap: its presence means the bucket is complete
//! retention.json                       retention horizon and what the WAL before it said
//! base/SPC/DB/REL[_fork][.N]           relation files of the bootstrap BASE_BACKUP
//! wal/TTTTTTTTXXXXXXXXYYYYYYYY         a complete WAL segment (as in pg_wal)
//! wal/TTTTTTTTXXXXXXXXYYYYYYYY.partial/OOOOOOOO
//!                                      a piece of the segment being written, from byte
//!                                      offset O (hex) to O + the object's size
//! images/images-NNNNNN.dat/OOOOOOOOOOOOOOOO
//!                                      a piece of an image file from byte offset O (hex)
//! ```
//!
//! Why it is enough, and ordered so that it stays enough at every moment:
//!
//! - WAL: the uploader ([`WalUploader`]) copies the archive's fsynced bytes to the bucket as
//!   they arrive, one piece per upload interval, and a segment as one object once it is
//!   complete (its pieces are then deleted). Its position, the end of the contiguous WAL in
//!   the bucket, bounds the flush position `run` acknowledges to PostgreSQL: a physical
//!   slot's restart_lsn is the acknowledged flush position (PostgreSQL's
//!   `PhysicalConfirmReceivedLocation`), so the server keeps every byte the bucket lacks.
//! - Base pages are uploaded at bootstrap before `helper.json`; a bucket without
//!   `helper.json` is not resumable and the helper re-uploads them.
//! - Images are a cache of what the WAL determines until retention deletes WAL; so before
//!   retention saves its state, the images it relies on are uploaded, and `retention.json`
//!   is uploaded before any WAL object is deleted (the same order as the local files).
//!   Images are also uploaded periodically so a resume regenerates fewer of them.
//! - Resume ([`Remote::restore`]): a data directory without `helper.json` and a bucket with
//!   one is filled from the bucket (base, images, WAL up to the bucket's contiguous end,
//!   retention state, `helper.json` last); streaming then restarts at the bucket's end,
//!   which is at or after the slot's restart_lsn. No BASE_BACKUP, no gap, no duplicate.
//!
//! For sharding (issue 19): base pages and images are keyed by relation file, so a shard map
//! can partition them by (tablespace, database, relation, block stripe) — a shard fetches the
//! byte ranges of its stripes; the WAL is stored once under `wal/` for every shard.
//!
//! One helper writes one prefix at a time (nothing in the bucket enforces it).
//!
//! The object store API is async; this module runs it on a small runtime of its own and
//! offers blocking calls, as the rest of the store is synchronous (threads).

use super::archive::read_segment_files;
use super::meta::HelperMeta;
use super::page_store::PageStore;
use super::shard::ShardMap;
use crate::sync::{lock, read};
use crate::wal::page::{Lsn, parse_segment_file_name, segment_file_name};
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub(crate) enum RemoteError {
    #[error(
        "the bucket's shards.json splits pages over {bucket}, this helper over {ours}: changing the number of shards (or the stripe) of a deployment is not supported (use another prefix)"
    )]
    ShardMismatch { bucket: String, ours: String },
    #[error("--object-store {url}: {reason}")]
    Config { url: String, reason: String },
    #[error("object store {op} {key}: {source}")]
    Request {
        op: &'static str,
        key: String,
        source: object_store::Error,
    },
    #[error("object store: {key} {reason}")]
    Damaged { key: String, reason: String },
    #[error("object store: {key} listed but gone")]
    Gone { key: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("object store: its runtime stopped")]
    Runtime,
    #[error(
        "the bucket's helper.json follows system {bucket_system} from {bucket_start}, the data directory's follows system {local_system} from {local_start}: a different bootstrap (use another prefix or an empty data directory)"
    )]
    Mismatch {
        bucket_system: u64,
        bucket_start: String,
        local_system: u64,
        local_start: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RemoteError + '_ {
    move |source| RemoteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What objects hold, for the counters: `wal/`, `base/`, `images/`, and the rest (metadata).
pub(crate) const KINDS: [&str; 4] = ["wal", "base", "images", "meta"];
/// Request kinds, for the counters.
pub(crate) const OPS: [&str; 4] = ["get", "put", "list", "delete"];
const GET: usize = 0;
const PUT: usize = 1;
const LIST: usize = 2;
const DELETE: usize = 3;
/// Byte rows of the counters, after the request rows.
const UP: usize = 4;
const DOWN: usize = 5;

fn kind_of(key: &str) -> usize {
    // A shard's own objects (`shards/I/images/...`) count by what they hold.
    let key = key
        .strip_prefix("shards/")
        .and_then(|r| r.split_once('/'))
        .map_or(key, |(_, rest)| rest);
    KINDS[..3]
        .iter()
        .position(|k| {
            key.strip_prefix(k)
                .is_some_and(|r| r.is_empty() || r.starts_with('/'))
        })
        .unwrap_or(3)
}

/// Request and byte counts since start-up (`/metrics`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RemoteCounters {
    /// Requests by [`OPS`] and [`KINDS`] (each part of a multipart upload counts).
    pub requests: [[u64; 4]; 4],
    /// Bytes uploaded, by [`KINDS`].
    pub bytes_uploaded: [u64; 4],
    /// Bytes downloaded, by [`KINDS`].
    pub bytes_downloaded: [u64; 4],
    /// End of the contiguous WAL in the bucket (0 without an object store).
    pub wal_lsn: u64,
    /// 1 while uploads fail.
    pub failing: bool,
}

struct Counters {
    /// Rows: [`OPS`], then bytes up and down; columns: [`KINDS`].
    by: [[AtomicU64; 4]; 6],
    wal_lsn: AtomicU64,
    failing: std::sync::atomic::AtomicBool,
}

static COUNTERS: Counters = Counters {
    by: [const { [const { AtomicU64::new(0) }; 4] }; 6],
    wal_lsn: AtomicU64::new(0),
    failing: std::sync::atomic::AtomicBool::new(false),
};

/// The counters of every object store request this process made.
pub(crate) fn counters() -> RemoteCounters {
    let c = &COUNTERS;
    let row =
        |r: usize| -> [u64; 4] { std::array::from_fn(|k| c.by[r][k].load(Ordering::Relaxed)) };
    RemoteCounters {
        requests: std::array::from_fn(row),
        bytes_uploaded: row(UP),
        bytes_downloaded: row(DOWN),
        wal_lsn: c.wal_lsn.load(Ordering::Relaxed),
        failing: c.failing.load(Ordering::Relaxed),
    }
}

/// Counts `n` in row `what` for the kind of object `key`.
fn count(what: usize, key: &str, n: u64) {
    COUNTERS.by[what][kind_of(key)].fetch_add(n, Ordering::Relaxed);
}

/// `s3://BUCKET[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectStoreUrl {
    pub bucket: String,
    pub prefix: String,
}

impl std::str::FromStr for ObjectStoreUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| format!("expected s3://BUCKET/PREFIX, not {s:?}"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("no bucket in {s:?}"));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(format!("prefix of {s:?} has a . or .. component"));
        }
        Ok(ObjectStoreUrl {
            bucket: bucket.to_string(),
            prefix,
        })
    }
}

impl std::fmt::Display for ObjectStoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// True for an endpoint on this host (plain HTTP is allowed only there: credentials and WAL
/// never cross a network unencrypted).
fn is_loopback_endpoint(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The HTTP client options `AmazonS3Builder::from_env` derived from the `AWS_*` environment
/// (`with_client_options` replaces them all, so they are derived again here), trusting the
/// certificate authorities of the PEM file `bundle` besides the system's.
fn client_options_with_ca(bundle: &Path) -> Result<object_store::ClientOptions, RemoteError> {
    use object_store::aws::AmazonS3ConfigKey;
    let bad = |reason: String| RemoteError::Config {
        url: format!("AWS_CA_BUNDLE={}", bundle.display()),
        reason,
    };
    let pem = fs::read(bundle).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let certificates = object_store::Certificate::from_pem_bundle(&pem)
        .map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
    if certificates.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    let mut options = object_store::ClientOptions::new();
    for (key, value) in std::env::vars() {
        if key.starts_with("AWS_")
            && let Ok(AmazonS3ConfigKey::Client(client_key)) =
                key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
        {
            options = options.with_config(client_key, value);
        }
    }
    Ok(certificates
        .into_iter()
        .fold(options, |o, c| o.with_root_certificate(c)))
}

/// A bucket prefix holding one helper's state.
pub(crate) struct Remote {
    store: Arc<dyn ObjectStore>,
    url: ObjectStoreUrl,
    /// Always Some until dropped (see `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
    /// Which shard this helper is: it decides where its own objects go (`shards/I/`), and
    /// whether it writes the WAL (shard 0).
    shard_map: ShardMap,
}

impl Drop for Remote {
    /// Dropping a runtime blocks until its tasks stop, which tokio refuses inside another
    /// runtime (where `run` drops its options on an error); nothing is in flight when the
    /// last user is gone, so it is shut down without waiting.
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.url)
    }
}

/// The bucket's shard map (`{shards, stripe_blocks}`), beside `helper.json`.
const SHARDS_KEY: &str = "shards.json";

/// Bytes read from a local file per upload call (multipart above this).
const UPLOAD_CHUNK: usize = 8 << 20;

impl Remote {
    /// Connects to `url` with the AWS environment: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`), `AWS_REGION` (default us-east-1),
    /// `AWS_ENDPOINT_URL` for a service other than AWS; a profile of
    /// `~/.aws/credentials` (`AWS_PROFILE`, else `default`) when the keys are not set.
    /// An `http://` endpoint is refused unless it is on loopback. `AWS_CA_BUNDLE` (as the
    /// AWS CLI and SDKs read it) names a PEM file of certificate authorities trusted besides
    /// the system's, for an `https://` endpoint whose certificate a private CA signed.
    pub(crate) fn from_env(url: ObjectStoreUrl) -> Result<Remote, RemoteError> {
        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
        let config = |reason: String| RemoteError::Config {
            url: url.to_string(),
            reason,
        };
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&url.bucket);
        if builder
            .get_config_value(&AmazonS3ConfigKey::AccessKeyId)
            .is_none()
            && let Some((key, secret, token)) = profile_credentials()
        {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret);
            if let Some(t) = token {
                builder = builder.with_token(t);
            }
        }
        if builder
            .get_config_value(&AmazonS3ConfigKey::Region)
            .is_none()
        {
            let region = builder
                .get_config_value(&AmazonS3ConfigKey::DefaultRegion)
                .unwrap_or_else(|| "us-east-1".into());
            builder = builder.with_region(region);
        }
        // Before allow_http below: the client options are replaced as a whole.
        if let Some(bundle) = std::env::var_os("AWS_CA_BUNDLE").filter(|b| !b.is_empty()) {
            builder = builder.with_client_options(client_options_with_ca(Path::new(&bundle))?);
        }
        if let Some(endpoint) = builder.get_config_value(&AmazonS3ConfigKey::Endpoint)
            && endpoint.starts_with("http://")
        {
            if !is_loopback_endpoint(&endpoint) {
                return Err(config(format!(
                    "endpoint {endpoint} is plain HTTP and not on loopback: use https"
                )));
            }
            builder = builder.with_allow_http(true);
        }
        let retry = object_store::RetryConfig {
            max_retries: 4,
            retry_timeout: Duration::from_secs(20),
            ..Default::default()
        };
        let store = builder
            .with_retry(retry)
            .build()
            .map_err(|e| config(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("object-store")
            .enable_all()
            .build()
            .map_err(|e| config(format!("cannot start its runtime: {e}")))?;
        Ok(Remote {
            store: Arc::new(store),
            url,
            runtime: Some(runtime),
            shard_map: ShardMap::UNSHARDED,
        })
    }

    /// This helper's shard (before the remote is shared).
    pub(crate) fn with_shard_map(mut self, map: ShardMap) -> Remote {
        self.shard_map = map;
        self
    }

    pub(crate) fn url(&self) -> &ObjectStoreUrl {
        &self.url
    }

    /// Whether this helper writes the WAL to the bucket: shard 0 (or the only helper). The
    /// other shards receive the same WAL from their own slots and only read the bucket's.
    pub(crate) fn is_wal_writer(&self) -> bool {
        self.shard_map.shard == 0
    }

    /// Where this helper's own objects (images, retention state) live: the prefix itself
    /// unsharded (today's layout), `shards/I/` for shard I.
    fn own_prefix(&self) -> String {
        Self::shard_prefix(self.shard_map, self.shard_map.shard)
    }

    fn shard_prefix(map: ShardMap, shard: u32) -> String {
        if map.is_sharded() {
            format!("shards/{shard}/")
        } else {
            String::new()
        }
    }

    /// The key of this helper's retention state.
    fn retention_key(&self) -> String {
        format!("{}retention.json", self.own_prefix())
    }

    /// Where this helper's image pieces are listed from.
    fn images_prefix(&self) -> String {
        format!("{}images/", self.own_prefix())
    }

    /// A piece of image file `n` from byte `offset`.
    pub(crate) fn image_piece_key(&self, n: u32, offset: u64) -> String {
        format!("{}images-{n:06}.dat/{offset:016x}", self.images_prefix())
    }

    /// The shard map of the bucket (`shards.json`, written by the first shard), checked
    /// against this helper's: a helper that would split pages another way is refused, and
    /// so is a sharded helper on a bucket an unsharded one wrote (and the reverse).
    pub(crate) fn check_shard_map(&self) -> Result<(), RemoteError> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct BucketShards {
            shards: u32,
            stripe_blocks: u32,
        }
        let ours = self.shard_map;
        let describe = |shards: u32, stripe: u32| {
            if shards <= 1 {
                "1 shard (unsharded)".to_string()
            } else {
                format!("{shards} shards in stripes of {stripe} blocks")
            }
        };
        let mismatch = |bucket: String| RemoteError::ShardMismatch {
            bucket,
            ours: describe(ours.shards, ours.stripe_blocks),
        };
        match self.get(SHARDS_KEY)? {
            Some(bytes) => {
                let theirs: BucketShards =
                    serde_json::from_slice(&bytes).map_err(|e| RemoteError::Damaged {
                        key: SHARDS_KEY.into(),
                        reason: e.to_string(),
                    })?;
                if !ours.is_sharded()
                    || theirs.shards != ours.shards
                    || theirs.stripe_blocks != ours.stripe_blocks
                {
                    return Err(mismatch(describe(theirs.shards, theirs.stripe_blocks)));
                }
                Ok(())
            }
            None if !ours.is_sharded() => Ok(()),
            None => {
                if self.get("helper.json")?.is_some() {
                    // An unsharded helper's bucket: its images and state are not per shard.
                    return Err(mismatch(describe(1, ours.stripe_blocks)));
                }
                let json = serde_json::to_vec_pretty(&BucketShards {
                    shards: ours.shards,
                    stripe_blocks: ours.stripe_blocks,
                })
                .map_err(|e| RemoteError::Damaged {
                    key: SHARDS_KEY.into(),
                    reason: e.to_string(),
                })?;
                self.put(SHARDS_KEY, Bytes::from(json))?;
                log::info!(
                    "object store {}: wrote shards.json ({})",
                    self.url,
                    describe(ours.shards, ours.stripe_blocks)
                );
                Ok(())
            }
        }
    }

    /// The oldest retention horizon of every shard (`shards/I/retention.json`): WAL below
    /// it is needed by no shard. None while a shard has no retention state yet (it may still
    /// rebuild from the backup start, so it pins every WAL object).
    fn min_shard_horizon(&self) -> Result<Option<Lsn>, RemoteError> {
        let map = self.shard_map;
        let mut min: Option<Lsn> = None;
        for shard in 0..map.shards {
            let key = format!("{}retention.json", Self::shard_prefix(map, shard));
            let Some(bytes) = self.get(&key)? else {
                return Ok(None);
            };
            let state: super::retention::RetentionState =
                serde_json::from_slice(&bytes).map_err(|e| RemoteError::Damaged {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
            let h = state.horizon_lsn();
            min = Some(min.map_or(h, |m| m.min(h)));
        }
        Ok(min)
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.url.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.url.prefix))
        }
    }

    /// `key` relative to the prefix.
    fn relative(&self, path: &ObjectPath) -> String {
        let s = path.as_ref();
        if self.url.prefix.is_empty() {
            return s.to_string();
        }
        s.strip_prefix(&self.url.prefix)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(s)
            .to_string()
    }

    /// Runs `fut` on the object store's runtime and waits for it (callable from any thread,
    /// inside the service's runtime too: the caller only blocks on a channel).
    fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, RemoteError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let runtime = self.runtime.as_ref().ok_or(RemoteError::Runtime)?;
        runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| RemoteError::Runtime)
    }

    /// The object at `key`, or None.
    pub(crate) fn get(&self, key: &str) -> Result<Option<Bytes>, RemoteError> {
        self.get_bytes(key, None)
    }

    /// Bytes `range` of the object at `key`, or None when there is no such object (a
    /// ranged GET: what the local cache reads back of a file it evicted).
    pub(crate) fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Bytes>, RemoteError> {
        self.get_bytes(key, Some(range))
    }

    /// GET of the whole object or of `range`; None when there is no such object.
    fn get_bytes(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Option<Bytes>, RemoteError> {
        let store = Arc::clone(&self.store);
        let path = self.path(key);
        count(GET, key, 1);
        let r = self.run(async move {
            let got = match range {
                None => match store.get(&path).await {
                    Ok(g) => g.bytes().await,
                    Err(e) => Err(e),
                },
                Some(range) => store.get_range(&path, range).await,
            };
            match got {
                Ok(b) => Ok(Some(b)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let r = r.map_err(|source| RemoteError::Request {
            op: "GET",
            key: key.to_string(),
            source,
        })?;
        if let Some(b) = &r {
            count(DOWN, key, b.len() as u64);
        }
        Ok(r)
    }

    /// Writes `bytes` at `key` (an object is replaced whole).
    pub(crate) fn put(&self, key: &str, bytes: Bytes) -> Result<(), RemoteError> {
        let store = Arc::clone(&self.store);
        let path = self.path(key);
        let n = bytes.len() as u64;
        count(PUT, key, 1);
        self.run(async move { store.put(&path, PutPayload::from(bytes)).await })?
            .map_err(|source| RemoteError::Request {
                op: "PUT",
                key: key.to_string(),
                source,
            })?;
        count(UP, key, n);
        Ok(())
    }

    /// Uploads the local file `src` to `key`: one PUT up to [`UPLOAD_CHUNK`], a multipart
    /// upload above.
    pub(crate) fn put_file(&self, key: &str, src: &Path) -> Result<(), RemoteError> {
        let len = fs::metadata(src).map_err(io_err(src))?.len();
        if len <= UPLOAD_CHUNK as u64 {
            let bytes = fs::read(src).map_err(io_err(src))?;
            return self.put(key, Bytes::from(bytes));
        }
        let store = Arc::clone(&self.store);
        let path = self.path(key);
        let src = src.to_path_buf();
        let key_s = key.to_string();
        // Parts of a multipart upload count as requests of their own.
        count(PUT, key, len.div_ceil(UPLOAD_CHUNK as u64) + 2);
        self.run(async move {
            use tokio::io::AsyncWriteExt;
            let mut file = File::open(&src).map_err(io_err(&src))?;
            let mut w = object_store::buffered::BufWriter::with_capacity(store, path, UPLOAD_CHUNK);
            let request = |source| RemoteError::Request {
                op: "PUT",
                key: key_s.clone(),
                source,
            };
            loop {
                let mut buf = vec![0u8; UPLOAD_CHUNK];
                let mut n = 0;
                while n < buf.len() {
                    match file.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(io_err(&src)(e)),
                    }
                }
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                count(UP, &key_s, n as u64);
                w.put(Bytes::from(buf)).await.map_err(request)?;
            }
            w.shutdown().await.map_err(|e| RemoteError::Request {
                op: "PUT",
                key: key_s.clone(),
                source: object_store::Error::Generic {
                    store: "S3",
                    source: Box::new(e),
                },
            })
        })?
    }

    /// Downloads each (key, local file) into a new fsynced file, [`DOWNLOADS_IN_FLIGHT`] at
    /// a time (a resume reads hundreds of base files); returns the bytes.
    pub(crate) fn get_files(&self, files: Vec<(String, PathBuf)>) -> Result<u64, RemoteError> {
        use futures_util::stream::TryStreamExt;
        let store = Arc::clone(&self.store);
        let jobs: Vec<_> = files
            .into_iter()
            .map(|(key, dest)| (self.path(&key), key, dest))
            .collect();
        self.run(async move {
            futures_util::stream::iter(jobs.into_iter().map(Ok))
                .map_ok(|(path, key, dest)| download(Arc::clone(&store), path, key, dest))
                .try_buffer_unordered(DOWNLOADS_IN_FLIGHT)
                .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
                .await
        })?
    }

    /// Downloads `key` into the new local file `dest` (fsynced).
    pub(crate) fn get_file(&self, key: &str, dest: &Path) -> Result<u64, RemoteError> {
        self.get_files(vec![(key.to_string(), dest.to_path_buf())])
    }

    /// Every object under `key_prefix` (relative to the prefix): (key, size), sorted.
    pub(crate) fn list(&self, key_prefix: &str) -> Result<Vec<(String, u64)>, RemoteError> {
        let store = Arc::clone(&self.store);
        let path = self.path(key_prefix.trim_end_matches('/'));
        count(LIST, key_prefix, 1);
        let metas = self
            .run(async move {
                let mut out = Vec::new();
                let mut s = store.list(Some(&path));
                while let Some(m) = s.next().await {
                    out.push(m?);
                }
                Ok::<_, object_store::Error>(out)
            })?
            .map_err(|source| RemoteError::Request {
                op: "LIST",
                key: key_prefix.to_string(),
                source,
            })?;
        let mut v: Vec<(String, u64)> = metas
            .iter()
            .map(|m| (self.relative(&m.location), m.size))
            .collect();
        v.sort();
        Ok(v)
    }

    pub(crate) fn delete(&self, key: &str) -> Result<(), RemoteError> {
        let store = Arc::clone(&self.store);
        let path = self.path(key);
        count(DELETE, key, 1);
        self.run(async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })?
        .map_err(|source| RemoteError::Request {
            op: "DELETE",
            key: key.to_string(),
            source,
        })
    }

    /// The bucket's `helper.json`, checked.
    pub(crate) fn meta(&self) -> Result<Option<HelperMeta>, RemoteError> {
        let Some(bytes) = self.get("helper.json")? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        HelperMeta::parse(&text, Path::new("helper.json"))
            .map(Some)
            .map_err(|e| RemoteError::Damaged {
                key: "helper.json".into(),
                reason: e.to_string(),
            })
    }

    /// Makes the bucket hold a bootstrapped data directory's base files and, last, its
    /// `helper.json` (when it has none yet); when it has one, checks that it is the same
    /// bootstrap.
    pub(crate) fn ensure_bootstrap(
        &self,
        data_dir: &Path,
        meta: &HelperMeta,
    ) -> Result<(), RemoteError> {
        self.check_shard_map()?;
        if let Some(theirs) = self.meta()? {
            return check_same(&theirs, meta);
        }
        let base = data_dir.join("base");
        let mut files = 0u64;
        let mut bytes = 0u64;
        for path in walk_files(&base)? {
            let rel = path.strip_prefix(data_dir).unwrap_or(&path);
            let key = rel.to_string_lossy().into_owned();
            self.put_file(&key, &path)?;
            files += 1;
            bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        }
        // A data directory that ran without an object store may have moved its retention
        // horizon already: the state goes up with the base (its images with the first image
        // upload, before streaming starts).
        let state = super::retention::RetentionState::path(data_dir);
        if state.exists() {
            self.put_file(&self.retention_key(), &state)?;
        }
        let path = HelperMeta::path(data_dir);
        self.put_file("helper.json", &path)?;
        log::info!(
            "object store {}: uploaded the base backup ({files} files, {} MB) and helper.json",
            self.url,
            bytes >> 20
        );
        Ok(())
    }

    /// Fills a data directory that has no `helper.json` from the bucket: base files, image
    /// files, the WAL up to the bucket's contiguous end (recorded as the archive's flush
    /// position), `retention.json`, and `helper.json` last. Returns None (and changes
    /// nothing) when the bucket has no `helper.json`. With `lazy_base` (a helper with a
    /// local cache) the base files stay in the bucket: each gets the stub of an evicted file.
    pub(crate) fn restore(
        &self,
        data_dir: &Path,
        lazy_base: bool,
    ) -> Result<Option<RestoreStats>, RemoteError> {
        self.check_shard_map()?;
        let Some(meta) = self.meta()? else {
            return Ok(None);
        };
        let started = Instant::now();
        let mut stats = RestoreStats::default();
        // What a half-done bootstrap or restore left means nothing without helper.json.
        for d in ["base", "base.tmp", "wal", "images"] {
            let p = data_dir.join(d);
            match fs::remove_dir_all(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
        let _ = fs::remove_file(super::retention::RetentionState::path(data_dir));

        let mut base = Vec::new();
        for (key, size) in self.list("base/")? {
            let dest = local_path(data_dir, &key)?;
            let dir = dest.parent().unwrap_or(data_dir);
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            if lazy_base {
                // Left in the bucket: a stub as if the local cache had evicted the file.
                super::cache::write_stub(&super::cache::stub_path(&dest), size)
                    .map_err(io_err(&dest))?;
                stats.base_files += 1;
                continue;
            }
            base.push((key, dest));
        }
        stats.base_files += base.len() as u64;
        stats.base_bytes = self.get_files(base)?;
        sync_tree(&data_dir.join("base"))?;

        let images_dir = data_dir.join("images");
        fs::create_dir_all(&images_dir).map_err(io_err(&images_dir))?;
        let images_prefix = self.images_prefix();
        for (file, pieces) in image_pieces(self.list(&images_prefix)?, &images_prefix)? {
            let dest = images_dir.join(&file);
            let f = File::create(&dest).map_err(io_err(&dest))?;
            let mut end = 0u64;
            for (offset, size) in pieces {
                if offset > end {
                    // A hole: the entries past it are not trusted (the uploader writes in
                    // order); stop at the last contiguous byte.
                    log::warn!(
                        "object store: image file {file} has a hole at {end}; keeping its first {end} bytes"
                    );
                    break;
                }
                let key = format!("{images_prefix}{file}/{offset:016x}");
                let Some(bytes) = self.get(&key)? else {
                    break;
                };
                if bytes.len() as u64 != size {
                    return Err(RemoteError::Damaged {
                        key,
                        reason: format!("{} bytes, listed as {size}", bytes.len()),
                    });
                }
                f.write_all_at(&bytes, offset).map_err(io_err(&dest))?;
                end = end.max(offset.saturating_add(size));
                stats.image_bytes += size;
            }
            f.sync_all().map_err(io_err(&dest))?;
            stats.image_files += 1;
        }
        super::sync_dir(&images_dir).map_err(io_err(&images_dir))?;

        let wal_dir = data_dir.join("wal");
        fs::create_dir_all(&wal_dir).map_err(io_err(&wal_dir))?;
        // The shard that streams may complete a segment (its pieces replaced by the whole
        // object) or retention may drop one between the LIST and the GETs: list again.
        let mut attempt = 0;
        let layout = loop {
            let layout = WalLayout::of(&self.list("wal/")?, &meta)?;
            match self.download_wal(&layout, &meta, &wal_dir) {
                Ok((segments, bytes)) => {
                    stats.wal_segments = segments;
                    stats.wal_bytes = bytes;
                    break layout;
                }
                Err(e) if attempt < WAL_RELIST_ATTEMPTS && object_gone(&e) => {
                    attempt += 1;
                    log::info!("{e} (the WAL changed while it was read): listing it again");
                    // Segments of this attempt that the new listing no longer has go too.
                    fs::remove_dir_all(&wal_dir).map_err(io_err(&wal_dir))?;
                    fs::create_dir_all(&wal_dir).map_err(io_err(&wal_dir))?;
                }
                Err(e) => return Err(e),
            }
        };
        super::archive::record_flush_position(&wal_dir, layout.end).map_err(|e| {
            RemoteError::Io {
                path: wal_dir.clone(),
                source: io::Error::other(e.to_string()),
            }
        })?;
        super::sync_dir(&wal_dir).map_err(io_err(&wal_dir))?;
        stats.wal_end = layout.end;

        if let Some(bytes) = self.get(&self.retention_key())? {
            let path = super::retention::RetentionState::path(data_dir);
            super::write_atomic(&path, &bytes).map_err(io_err(&path))?;
        }
        meta.store(data_dir).map_err(|e| RemoteError::Io {
            path: HelperMeta::path(data_dir),
            source: io::Error::other(e.to_string()),
        })?;
        stats.duration_ms = started.elapsed().as_millis() as u64;
        Ok(Some(stats))
    }

    /// Downloads the WAL `layout` lists into `wal_dir`: whole segments, and the pieces of
    /// the one being streamed up to the end of the contiguous WAL. Returns (segments,
    /// bytes); [`RemoteError::Gone`] when a listed piece is not there any more.
    fn download_wal(
        &self,
        layout: &WalLayout,
        meta: &HelperMeta,
        wal_dir: &Path,
    ) -> Result<(u64, u64), RemoteError> {
        let (mut segments, mut bytes) = (0, 0);
        let seg = u64::from(meta.segment_size);
        for segno in layout.first_segno..=layout.end.0.saturating_sub(1) / seg {
            if layout.end.0 <= segno * seg {
                break;
            }
            let name = segment_file_name(meta.timeline, segno, meta.segment_size);
            let dest = wal_dir.join(&name);
            if layout.whole.contains(&segno) {
                bytes += self.get_file(&format!("wal/{name}"), &dest)?;
            } else {
                let f = File::create(&dest).map_err(io_err(&dest))?;
                f.set_len(seg).map_err(io_err(&dest))?;
                for (offset, size) in layout.pieces.get(&segno).into_iter().flatten() {
                    if segno * seg + offset >= layout.end.0 {
                        break;
                    }
                    let key = format!("wal/{name}.partial/{offset:08x}");
                    let Some(piece) = self.get(&key)? else {
                        return Err(RemoteError::Gone { key });
                    };
                    if piece.len() as u64 != *size {
                        return Err(RemoteError::Damaged {
                            key,
                            reason: format!("{} bytes, listed as {size}", piece.len()),
                        });
                    }
                    f.write_all_at(&piece, *offset).map_err(io_err(&dest))?;
                    bytes += size;
                }
                f.sync_all().map_err(io_err(&dest))?;
            }
            segments += 1;
        }
        Ok((segments, bytes))
    }

    /// The image files in the bucket: their uploaded bytes and pieces.
    pub(crate) fn image_piece_map(&self) -> Result<ImagePieces, RemoteError> {
        let mut images = BTreeMap::new();
        let images_prefix = self.images_prefix();
        for (file, pieces) in image_pieces(self.list(&images_prefix)?, &images_prefix)? {
            let n: u32 = file
                .trim_start_matches("images-")
                .trim_end_matches(".dat")
                .parse()
                .unwrap_or(0);
            let len = pieces
                .iter()
                .map(|(o, s)| o.saturating_add(*s))
                .max()
                .unwrap_or(0);
            images.insert(n, (len, pieces.iter().map(|(o, _)| *o).collect()));
        }
        Ok(images)
    }

    /// Uploads the local `retention.json` (before any WAL object below its horizon goes).
    pub(crate) fn put_retention_state(&self, data_dir: &Path) -> Result<(), RemoteError> {
        self.put_file(
            &self.retention_key(),
            &super::retention::RetentionState::path(data_dir),
        )
    }

    /// Deletes the WAL objects (segments and pieces) of segments before `horizon_segno`.
    /// Sharded, only the WAL writer deletes, and only below every shard's horizon.
    pub(crate) fn delete_wal_before(
        &self,
        horizon_segno: u64,
        meta_segment_size: u32,
    ) -> Result<u64, RemoteError> {
        let mut horizon_segno = horizon_segno;
        if self.shard_map.is_sharded() {
            if !self.is_wal_writer() {
                return Ok(0);
            }
            match self.min_shard_horizon()? {
                Some(min) => {
                    horizon_segno = horizon_segno.min(min.0 / u64::from(meta_segment_size))
                }
                None => return Ok(0),
            }
        }
        let mut n = 0;
        for (key, _) in self.list("wal/")? {
            let name = key.trim_start_matches("wal/");
            let seg_name = name.split(".partial/").next().unwrap_or(name);
            if let Some((_, segno)) = parse_segment_file_name(seg_name, meta_segment_size)
                && segno < horizon_segno
            {
                self.delete(&key)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Image file number → (bytes the bucket holds, offsets of its pieces).
pub(crate) type ImagePieces = BTreeMap<u32, (u64, Vec<u64>)>;

/// The piece of image file `n` holding bytes [offset, offset + len): (its start offset in
/// the file, where the bytes start in it); None when the bucket does not hold them in one
/// piece (pieces end on entry boundaries, so an entry never spans two).
pub(crate) fn image_piece_in(
    pieces: &ImagePieces,
    n: u32,
    offset: u64,
    len: u64,
) -> Option<(u64, u64)> {
    let (uploaded, offsets) = pieces.get(&n)?;
    if offset.checked_add(len)? > *uploaded {
        return None;
    }
    let start = offsets.iter().copied().filter(|o| *o <= offset).max()?;
    let end = offsets
        .iter()
        .copied()
        .filter(|o| *o > start)
        .min()
        .unwrap_or(*uploaded);
    (offset + len <= end).then_some((start, offset - start))
}

/// Object key of the local file `rel` (relative to the data directory) under `base/`:
/// the same path (`base/SPC/DB/REL[_fork][.N]`).
pub(crate) fn base_key(rel: &str) -> String {
    rel.to_string()
}

/// Object key of the complete WAL segment `name`.
pub(crate) fn wal_segment_key(name: &str) -> String {
    format!("wal/{name}")
}

/// Concurrent GETs of a restore.
const DOWNLOADS_IN_FLIGHT: usize = 8;

/// GETs `path` (`key` relative to the prefix, for errors and counters) into the new file
/// `dest`, fsynced; returns its bytes.
async fn download(
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    key: String,
    dest: PathBuf,
) -> Result<u64, RemoteError> {
    use std::io::Write;
    count(GET, &key, 1);
    let request = |source| RemoteError::Request {
        op: "GET",
        key: key.clone(),
        source,
    };
    let got = store.get(&path).await.map_err(request)?;
    let mut stream = got.into_stream();
    let mut f = File::create(&dest).map_err(io_err(&dest))?;
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(request)?;
        f.write_all(&chunk).map_err(io_err(&dest))?;
        n += chunk.len() as u64;
    }
    f.sync_all().map_err(io_err(&dest))?;
    count(DOWN, &key, n);
    Ok(n)
}

/// LISTs of the WAL a resume makes when an object it listed is gone when it reads it.
const WAL_RELIST_ATTEMPTS: u32 = 5;

/// An object listed a moment before is not there any more.
fn object_gone(e: &RemoteError) -> bool {
    match e {
        RemoteError::Gone { .. } => true,
        RemoteError::Request { source, .. } => {
            matches!(source, object_store::Error::NotFound { .. })
        }
        _ => false,
    }
}

/// Refuses a bucket bootstrapped from another cluster or another BASE_BACKUP.
fn check_same(bucket: &HelperMeta, local: &HelperMeta) -> Result<(), RemoteError> {
    if bucket.system_identifier != local.system_identifier
        || bucket.backup_start_lsn != local.backup_start_lsn
        || bucket.timeline != local.timeline
    {
        return Err(RemoteError::Mismatch {
            bucket_system: bucket.system_identifier,
            bucket_start: bucket.backup_start_lsn.clone(),
            local_system: local.system_identifier,
            local_start: local.backup_start_lsn.clone(),
        });
    }
    Ok(())
}

/// What [`Remote::restore`] downloaded.
#[derive(Debug, Default, Clone)]
pub(crate) struct RestoreStats {
    pub base_files: u64,
    pub base_bytes: u64,
    pub image_files: u64,
    pub image_bytes: u64,
    pub wal_segments: u64,
    pub wal_bytes: u64,
    pub wal_end: Lsn,
    pub duration_ms: u64,
}

/// The local path of object `key` under `data_dir`, refusing keys that would leave it.
fn local_path(data_dir: &Path, key: &str) -> Result<PathBuf, RemoteError> {
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(RemoteError::Damaged {
            key: key.to_string(),
            reason: "is not a relative path".into(),
        });
    }
    Ok(data_dir.join(key))
}

/// Every regular file under `dir`, sorted.
fn walk_files(dir: &Path) -> Result<Vec<PathBuf>, RemoteError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io_err(&d))? {
            let e = e.map_err(io_err(&d))?;
            let t = e.file_type().map_err(io_err(&d))?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// fsync every directory under (and including) `dir`.
fn sync_tree(dir: &Path) -> Result<(), RemoteError> {
    if !dir.exists() {
        return Ok(());
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(io_err(&d))? {
            let e = e.map_err(io_err(&d))?;
            if e.file_type().map_err(io_err(&d))?.is_dir() {
                stack.push(e.path());
            }
        }
        super::sync_dir(&d).map_err(io_err(&d))?;
    }
    Ok(())
}

/// Image pieces by file name: (offset, size), sorted by offset.
fn image_pieces(
    listed: Vec<(String, u64)>,
    images_prefix: &str,
) -> Result<BTreeMap<String, Vec<(u64, u64)>>, RemoteError> {
    let mut files: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for (key, size) in listed {
        let damaged = || RemoteError::Damaged {
            key: key.clone(),
            reason: "is not images/images-NNNNNN.dat/OFFSET".into(),
        };
        let rest = key.strip_prefix(images_prefix).ok_or_else(damaged)?;
        let (file, offset) = rest.split_once('/').ok_or_else(damaged)?;
        let valid_name = file
            .strip_prefix("images-")
            .and_then(|s| s.strip_suffix(".dat"))
            .is_some_and(|n| n.parse::<u32>().is_ok());
        let offset = u64::from_str_radix(offset, 16).map_err(|_| damaged())?;
        if !valid_name {
            return Err(damaged());
        }
        files
            .entry(file.to_string())
            .or_default()
            .push((offset, size));
    }
    for v in files.values_mut() {
        v.sort_unstable();
    }
    Ok(files)
}

/// The WAL objects of a bucket: whole segments, pieces of partial ones, and the end of the
/// contiguous WAL from the first segment.
#[derive(Debug, Default, PartialEq, Eq)]
struct WalLayout {
    first_segno: u64,
    whole: std::collections::BTreeSet<u64>,
    /// segno → (offset in the segment, size), sorted.
    pieces: BTreeMap<u64, Vec<(u64, u64)>>,
    /// End of the contiguous WAL (the archive start when the bucket has none).
    end: Lsn,
}

impl WalLayout {
    fn of(listed: &[(String, u64)], meta: &HelperMeta) -> Result<WalLayout, RemoteError> {
        let seg = u64::from(meta.segment_size);
        let mut layout = WalLayout::default();
        for (key, size) in listed {
            let damaged = |reason: &str| RemoteError::Damaged {
                key: key.clone(),
                reason: reason.to_string(),
            };
            let name = key.strip_prefix("wal/").ok_or_else(|| damaged("not WAL"))?;
            let (seg_name, piece) = match name.split_once(".partial/") {
                Some((s, p)) => (s, Some(p)),
                None => (name, None),
            };
            let Some((tli, segno)) = parse_segment_file_name(seg_name, meta.segment_size) else {
                return Err(damaged("is not a WAL segment name"));
            };
            if tli != meta.timeline {
                return Err(damaged(&format!(
                    "is on timeline {tli}, the helper follows {}",
                    meta.timeline
                )));
            }
            match piece {
                None if *size == seg => {
                    layout.whole.insert(segno);
                }
                None => return Err(damaged(&format!("{size} bytes, not a whole segment"))),
                Some(p) => {
                    let off = u64::from_str_radix(p, 16)
                        .ok()
                        .filter(|o| o.checked_add(*size).is_some_and(|e| e <= seg))
                        .ok_or_else(|| damaged("is not a piece offset in the segment"))?;
                    layout.pieces.entry(segno).or_default().push((off, *size));
                }
            }
        }
        for v in layout.pieces.values_mut() {
            v.sort_unstable();
        }
        let archive_start = super::offline::archive_start(meta);
        let first = layout
            .whole
            .iter()
            .chain(layout.pieces.keys())
            .min()
            .copied();
        let Some(first) = first else {
            layout.first_segno = archive_start.0 / seg;
            layout.end = archive_start;
            return Ok(layout);
        };
        layout.first_segno = first;
        let mut segno = first;
        layout.end = loop {
            if layout.whole.contains(&segno) {
                segno += 1;
                continue;
            }
            let mut off = 0u64;
            for (o, size) in layout.pieces.get(&segno).into_iter().flatten() {
                if *o > off {
                    break;
                }
                off = off.max(o + size);
            }
            if off == seg {
                segno += 1;
                continue;
            }
            break Lsn(segno * seg + off);
        };
        Ok(layout)
    }
}

/// Copies the archive's fsynced WAL to the bucket, on a thread of its own, and publishes how
/// far the bucket's contiguous WAL reaches: the flush position `run` acknowledges never
/// passes [`WalUploader::uploaded`].
pub(crate) struct WalUploader {
    remote: Arc<Remote>,
    wal_dir: PathBuf,
    timeline: u32,
    segment_size: u32,
    /// The archive's flush position, as `run` last reported it.
    flushed: AtomicU64,
    uploaded: AtomicU64,
    wake: (Mutex<bool>, Condvar),
    interval: Duration,
    /// Piece offsets uploaded for the segment being written (deleted once it is whole).
    pieces: Mutex<BTreeMap<u64, Vec<u64>>>,
    /// Image file lengths in the bucket (file number → (bytes, piece offsets)). Held only
    /// for a lookup or an update, never while waiting on anything: readers of the image
    /// store ask it under the store's read lock (the cache's eviction pass, a read of an
    /// evicted image file).
    images: Mutex<ImagePieces>,
    /// One [`WalUploader::upload_images`] at a time (the upload thread and retention).
    image_uploads: Mutex<()>,
    /// The bootstrap the WAL belongs to (for reading the bucket's WAL layout).
    meta: HelperMeta,
}

/// Pending WAL above which the uploader does not wait for the interval.
const UPLOAD_EARLY_BYTES: u64 = 8 << 20;

impl WalUploader {
    /// Reads where the bucket's WAL ends and starts the upload thread.
    pub(crate) fn start(
        remote: Arc<Remote>,
        wal_dir: &Path,
        meta: &HelperMeta,
        local_flush: Lsn,
        interval: Duration,
    ) -> Result<Arc<WalUploader>, RemoteError> {
        let mut layout = WalLayout::of(&remote.list("wal/")?, meta)?;
        let writer = remote.is_wal_writer();
        if writer && layout.whole.is_empty() && layout.pieces.is_empty() {
            // Nothing uploaded yet: from the oldest segment the archive still has (retention
            // may have removed older ones before object storage was configured).
            let seg = u64::from(meta.segment_size);
            let oldest = fs::read_dir(wal_dir)
                .map_err(io_err(wal_dir))?
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name();
                    parse_segment_file_name(name.to_str()?, meta.segment_size)
                })
                .filter(|(tli, _)| *tli == meta.timeline)
                .map(|(_, segno)| segno)
                .min();
            if let Some(segno) = oldest {
                layout.end = layout.end.max(Lsn(segno * seg).min(local_flush));
            }
        }
        // A shard that does not write the WAL may be behind the bucket (it follows it).
        if writer && layout.end > local_flush {
            return Err(RemoteError::Damaged {
                key: "wal/".into(),
                reason: format!(
                    "reaches {}, past the data directory's flush position {local_flush}: another helper writes this prefix, or the data directory is older than the bucket (start on an empty data directory to resume from the bucket)",
                    layout.end
                ),
            });
        }
        let images = remote.image_piece_map()?;
        let pieces = layout
            .pieces
            .iter()
            .map(|(s, v)| (*s, v.iter().map(|(o, _)| *o).collect()))
            .collect();
        let up = Arc::new(WalUploader {
            remote,
            wal_dir: wal_dir.to_path_buf(),
            timeline: meta.timeline,
            segment_size: meta.segment_size,
            flushed: AtomicU64::new(local_flush.0),
            uploaded: AtomicU64::new(layout.end.0),
            wake: (Mutex::new(false), Condvar::new()),
            interval,
            pieces: Mutex::new(pieces),
            images: Mutex::new(images),
            image_uploads: Mutex::new(()),
            meta: meta.clone(),
        });
        log::info!(
            "object store {}: WAL in the bucket up to {}, archive flushed to {local_flush}",
            up.remote.url,
            layout.end
        );
        COUNTERS.wal_lsn.store(layout.end.0, Ordering::Relaxed);
        let me = Arc::clone(&up);
        crate::sync::supervise::spawn("wal-upload".into(), "wal-upload", move || me.run())
            .map_err(|e| RemoteError::Io {
                path: up.wal_dir.clone(),
                source: e,
            })?;
        Ok(up)
    }

    pub(crate) fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    /// End of the contiguous WAL in the bucket.
    pub(crate) fn uploaded(&self) -> Lsn {
        Lsn(self.uploaded.load(Ordering::SeqCst))
    }

    /// The archive is durable up to `lsn` (called after every flush).
    pub(crate) fn note_flushed(&self, lsn: Lsn) {
        let before = self.flushed.fetch_max(lsn.0, Ordering::SeqCst);
        if lsn.0.saturating_sub(self.uploaded.load(Ordering::SeqCst)) >= UPLOAD_EARLY_BYTES
            && before < lsn.0
        {
            *lock(&self.wake.0) = true;
            self.wake.1.notify_one();
        }
    }

    fn run(&self) {
        let mut failures = 0u32;
        loop {
            {
                let mut woken = lock(&self.wake.0);
                if !*woken {
                    let wait = if failures > 0 {
                        Duration::from_secs(u64::from(failures.min(10)))
                    } else {
                        self.interval
                    };
                    woken = crate::sync::recover(self.wake.1.wait_timeout(woken, wait)).0;
                }
                *woken = false;
            }
            let step = if self.remote.is_wal_writer() {
                self.upload_pending()
            } else {
                self.follow_bucket()
            };
            match step {
                Ok(()) => {
                    if failures > 0 {
                        log::info!(
                            "object store {}: uploading again (WAL up to {})",
                            self.remote.url,
                            self.uploaded()
                        );
                    }
                    failures = 0;
                    COUNTERS.failing.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    if failures == 0 {
                        log::warn!(
                            "object store {}: WAL upload failed ({e}); acknowledgements to the server stay at {} until it succeeds",
                            self.remote.url,
                            self.uploaded()
                        );
                    }
                    failures = failures.saturating_add(1);
                    COUNTERS.failing.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// A shard other than the WAL writer uploads no WAL: its acknowledgements are bounded by
    /// the end of the contiguous WAL the writer put in the bucket, read here by listing it.
    fn follow_bucket(&self) -> Result<(), RemoteError> {
        let layout = WalLayout::of(&self.remote.list("wal/")?, &self.meta)?;
        let before = self.uploaded.fetch_max(layout.end.0, Ordering::SeqCst);
        COUNTERS
            .wal_lsn
            .store(before.max(layout.end.0), Ordering::Relaxed);
        Ok(())
    }

    /// Uploads every fsynced byte not yet in the bucket: whole segments where complete, a
    /// piece of the segment being written otherwise.
    fn upload_pending(&self) -> Result<(), RemoteError> {
        let seg = u64::from(self.segment_size);
        loop {
            let from = self.uploaded.load(Ordering::SeqCst);
            let to = self.flushed.load(Ordering::SeqCst);
            if to <= from {
                return Ok(());
            }
            let segno = from / seg;
            let seg_end = (segno + 1) * seg;
            let name = segment_file_name(self.timeline, segno, self.segment_size);
            if to >= seg_end {
                // Complete: the segment as one object, then its pieces go.
                self.remote
                    .put_file(&wal_segment_key(&name), &self.wal_dir.join(&name))?;
                let pieces = lock(&self.pieces).remove(&segno).unwrap_or_default();
                for off in pieces {
                    self.remote
                        .delete(&format!("wal/{name}.partial/{off:08x}"))?;
                }
                self.uploaded.store(seg_end, Ordering::SeqCst);
                COUNTERS.wal_lsn.store(seg_end, Ordering::Relaxed);
                continue;
            }
            let mut buf = Vec::with_capacity((to - from) as usize);
            read_segment_files(
                &self.wal_dir,
                self.timeline,
                self.segment_size,
                Lsn(from),
                Lsn(to),
                &mut buf,
            )
            .map_err(|e| RemoteError::Io {
                path: self.wal_dir.join(&name),
                source: io::Error::other(e.to_string()),
            })?;
            let off = from - segno * seg;
            self.remote
                .put(&format!("wal/{name}.partial/{off:08x}"), Bytes::from(buf))?;
            lock(&self.pieces).entry(segno).or_default().push(off);
            self.uploaded.store(to, Ordering::SeqCst);
            COUNTERS.wal_lsn.store(to, Ordering::Relaxed);
        }
    }

    /// Uploads the image bytes not yet in the bucket (synced locally first), then deletes
    /// the objects of image files the store no longer has (compacted away): moved entries
    /// are in the bucket before their old copies go.
    pub(crate) fn upload_images(&self, store: &PageStore) -> Result<(), RemoteError> {
        let _one_at_a_time = lock(&self.image_uploads);
        // Lock order: the image store's lock is never asked for under `self.images`. A
        // reader holding the store's read lock may be waiting for `self.images`; with an
        // image writer queued between them (std's RwLock then holds back new readers), a
        // second read here would never be granted and the three would wait forever.
        let (dir, files) = {
            let img = read(&store.images);
            img.sync().map_err(|e| RemoteError::Io {
                path: img.dir().to_path_buf(),
                source: io::Error::other(e.to_string()),
            })?;
            (img.dir().to_path_buf(), img.file_lengths())
        };
        for (n, len) in &files {
            let from = lock(&self.images)
                .get(n)
                .map_or(0, |(uploaded, _)| *uploaded);
            if *len <= from {
                continue;
            }
            let path = super::images::file_path(&dir, *n);
            let f = File::open(&path).map_err(io_err(&path))?;
            let mut buf = vec![0u8; (len - from) as usize];
            f.read_exact_at(&mut buf, from).map_err(io_err(&path))?;
            let key = self.remote.image_piece_key(*n, from);
            self.remote.put(&key, Bytes::from(buf))?;
            // Only now may the cache count these bytes as the bucket's (and evict them).
            let mut state = lock(&self.images);
            let entry = state.entry(*n).or_insert((0, Vec::new()));
            entry.1.push(from);
            entry.0 = *len;
        }
        let gone: Vec<(u32, Vec<u64>)> = lock(&self.images)
            .iter()
            .filter(|(n, _)| !files.iter().any(|(f, _)| f == *n))
            .map(|(n, (_, offsets))| (*n, offsets.clone()))
            .collect();
        for (n, offsets) in gone {
            for off in offsets {
                self.remote.delete(&self.remote.image_piece_key(n, off))?;
            }
            lock(&self.images).remove(&n);
        }
        Ok(())
    }

    /// Bytes of image file `n` the bucket holds (0 when none): the cache evicts a file only
    /// when the bucket holds all of it.
    pub(crate) fn image_bytes_uploaded(&self, n: u32) -> u64 {
        lock(&self.images).get(&n).map_or(0, |(len, _)| *len)
    }

    /// The object holding bytes [offset, offset + len) of image file `n` and where they
    /// start in it (see [`image_piece_in`]).
    pub(crate) fn image_piece(&self, n: u32, offset: u64, len: u64) -> Option<(String, u64)> {
        let (start, at) = image_piece_in(&lock(&self.images), n, offset, len)?;
        Some((self.remote.image_piece_key(n, start), at))
    }

    /// Uploads images every `interval` on a thread of its own (a resume then regenerates
    /// fewer of them; retention uploads them itself before it needs them).
    pub(crate) fn spawn_image_uploads(self: &Arc<Self>, store: Arc<PageStore>, interval: Duration) {
        let me = Arc::clone(self);
        let spawned =
            crate::sync::supervise::spawn("image-upload".into(), "image-upload", move || {
                loop {
                    std::thread::sleep(interval);
                    if let Err(e) = me.upload_images(&store) {
                        log::warn!("object store {}: image upload failed: {e}", me.remote.url);
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the image upload thread: {e}");
        }
    }
}

/// `~/.aws/credentials` keys of `AWS_PROFILE` (default `default`), when the file has them.
fn profile_credentials() -> Option<(String, String, Option<String>)> {
    let path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")))?;
    let text = fs::read_to_string(path).ok()?;
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    parse_profile(&text, &profile)
}

/// The keys of `[profile]` in an AWS credentials file (INI).
fn parse_profile(text: &str, profile: &str) -> Option<(String, String, Option<String>)> {
    let mut in_section = false;
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = name.trim() == profile;
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => key = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some((key?, secret?, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::meta::tests::meta;

    #[test]
    fn a_ca_bundle_must_be_a_readable_pem_certificate_file() {
        let dir = std::env::temp_dir().join(format!("remote-ca-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = client_options_with_ca(&missing).unwrap_err().to_string();
        assert!(err.contains("cannot read it"), "{err}");
        let empty = dir.join("empty.pem");
        fs::write(&empty, "no certificate here\n").unwrap();
        let err = client_options_with_ca(&empty).unwrap_err().to_string();
        assert!(err.contains("AWS_CA_BUNDLE="), "{err}");
        let garbage = dir.join("garbage.pem");
        fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(client_options_with_ca(&garbage).is_err());
        // A real certificate (the helper's API test certificate is made the same way).
        let made = std::process::Command::new("openssl")
            .current_dir(&dir)
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=ca", "-keyout", "ca.key", "-out", "ca.pem"])
            .output()
            .is_ok_and(|o| o.status.success());
        if made {
            assert!(client_options_with_ca(&dir.join("ca.pem")).is_ok());
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn urls_endpoints_and_profiles() {
        let u: ObjectStoreUrl = "s3://b/some/prefix/".parse().unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("b", "some/prefix"));
        assert_eq!("s3://b".parse::<ObjectStoreUrl>().unwrap().prefix, "");
        for bad in ["b/p", "s3:///p", "s3://b/../x", "http://b"] {
            assert!(bad.parse::<ObjectStoreUrl>().is_err(), "{bad}");
        }
        for ok in [
            "http://127.0.0.1:9000",
            "http://localhost/",
            "http://[::1]:80",
        ] {
            assert!(is_loopback_endpoint(ok), "{ok}");
        }
        for no in [
            "http://10.0.0.1:9000",
            "https://127.0.0.1",
            "http://s3.example",
        ] {
            assert!(!is_loopback_endpoint(no), "{no}");
        }
        let ini =
            "[default]\naws_access_key_id = A\naws_secret_access_key=B\n[x]\naws_access_key_id=C\n";
        assert_eq!(
            parse_profile(ini, "default"),
            Some(("A".into(), "B".into(), None))
        );
        assert_eq!(parse_profile(ini, "x"), None);
    }

    #[test]
    fn counters_by_kind() {
        assert_eq!(kind_of("wal/000000010000000000000003"), 0);
        assert_eq!(kind_of("wal/"), 0);
        assert_eq!(kind_of("base/1663/5/16384"), 1);
        assert_eq!(kind_of("images/images-000001.dat/0000000000000000"), 2);
        assert_eq!(kind_of("helper.json"), 3);
        assert_eq!(kind_of("walrus"), 3);
        assert_eq!(kind_of("shards/1/images/images-000001.dat/00"), 2);
        assert_eq!(kind_of("shards/1/retention.json"), 3);
    }

    #[test]
    fn wal_layout_ends_at_the_first_hole() {
        let seg = 16u64 << 20;
        let name = |s: u64| segment_file_name(1, s, 16 << 20);
        let listed = vec![
            (format!("wal/{}", name(2)), seg),
            (format!("wal/{}", name(3)), seg),
            (format!("wal/{}.partial/00000000", name(4)), 100),
            (format!("wal/{}.partial/00000064", name(4)), 50),
            // After a hole: not part of the contiguous WAL.
            (format!("wal/{}.partial/000000ff", name(4)), 10),
        ];
        let l = WalLayout::of(&listed, &meta()).unwrap();
        assert_eq!(l.first_segno, 2);
        assert_eq!(l.end, Lsn(4 * seg + 150));
        let empty = WalLayout::of(&[], &meta()).unwrap();
        assert_eq!(empty.end, Lsn(0x2000000));
        let bad = vec![(format!("wal/{}", name(2)), 5)];
        assert!(WalLayout::of(&bad, &meta()).is_err());
        // Offsets past the segment (or overflowing) are damage, not a panic.
        for off in ["ffffffffffffffff", "01000000", "zz"] {
            let bad = vec![(format!("wal/{}.partial/{off}", name(2)), 10)];
            assert!(WalLayout::of(&bad, &meta()).is_err(), "{off}");
        }
        let other_tli = vec![(format!("wal/{}", segment_file_name(2, 2, 16 << 20)), seg)];
        assert!(WalLayout::of(&other_tli, &meta()).is_err());
    }
}
