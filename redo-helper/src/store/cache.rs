//! The data directory as a bounded cache of the bucket (`run --object-store ... --cache-size
//! SIZE`).
//!
//! In object-storage mode every base file, every complete WAL segment the uploader has
//! passed and every image file whose bytes are all uploaded is also in the bucket; the local
//! copy is only a faster way to read it. This layer bounds the local bytes of those files:
//! when they exceed `--cache-size`, the coldest (least recently read; a file not read since
//! start-up counts by its modification time) are evicted, and a read of an evicted file is
//! a ranged GET of the bytes it needs from the object the file was uploaded as.
//!
//! What is never evicted, so that ingest and the acknowledgement never wait on the bucket:
//! WAL the bucket does not hold yet, the segment being written and the [`KEEP_NEWEST_WAL`]
//! complete segments before the bucket's end (image generation replays the newest deltas;
//! most come from the in-memory `RecentWal`), the image file being appended to, image bytes
//! not uploaded yet, and image files with damaged entries.
//!
//! An evicted file `F` leaves a stub `F.evicted` beside it, written (and fsynced) before `F`
//! is removed, so the metadata stays local: a base stub holds the file's length (the pages
//! the backup had), an image stub holds the 36-byte header of every entry (the image index is
//! rebuilt from it at open), a WAL stub its length. A reader that finds `F` gone and its stub
//! present fetches from the bucket; one that finds neither sees the file as absent, as
//! before. A fetch the bucket cannot serve is an error that names the file and the object:
//! never zeros or a guessed page.
//!
//! One data directory per process: `run` installs the cache ([`install`]) before it opens the
//! store, and the readers (`BaseFiles`, `ImageStore`, the archive's readers) go through
//! [`read_exact_at`].

use super::page_store::PageStore;
use super::remote::{self, Remote, WalUploader};
use crate::sync::{lock, read};
use crate::wal::page::parse_segment_file_name;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Suffix of the stub an evicted file leaves.
pub(crate) const EVICTED_SUFFIX: &str = ".evicted";

/// Complete WAL segments before the bucket's end that stay local.
pub(crate) const KEEP_NEWEST_WAL: u64 = 2;

/// WAL is fetched in blocks of this size and the last [`WAL_BLOCKS_KEPT`] are kept in memory:
/// a page's chain reads many small records of one segment, a GET each would be slow.
const WAL_BLOCK: u64 = 256 << 10;
const WAL_BLOCKS_KEPT: usize = 32;

/// How often the eviction pass runs.
pub(crate) const EVICT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheError {
    #[error(
        "{path} was evicted from the local cache and the bucket cannot deliver {key}: {reason}"
    )]
    Fetch {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error(
        "{path} was evicted by --cache-size: it can be read only by `run` with its --object-store"
    )]
    NoCache { path: PathBuf },
    #[error("local cache: {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The stub an evicted `path` leaves.
pub(crate) fn stub_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(EVICTED_SUFFIX);
    PathBuf::from(s)
}

/// Counters since start-up (`/metrics`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CacheCounters {
    /// The bound (0: no cache).
    pub limit: u64,
    /// Local bytes of evictable files (those the bucket holds), at the last pass.
    pub bytes: u64,
    pub evictions: u64,
    pub evicted_bytes: u64,
    pub fetches: u64,
    pub fetch_bytes: u64,
    pub fetch_failures: u64,
    pub fetch_micros: u64,
    pub fetch_max_micros: u64,
}

struct Counters {
    limit: AtomicU64,
    bytes: AtomicU64,
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
    fetches: AtomicU64,
    fetch_bytes: AtomicU64,
    fetch_failures: AtomicU64,
    fetch_micros: AtomicU64,
    fetch_max_micros: AtomicU64,
}

static COUNTERS: Counters = Counters {
    limit: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
    evictions: AtomicU64::new(0),
    evicted_bytes: AtomicU64::new(0),
    fetches: AtomicU64::new(0),
    fetch_bytes: AtomicU64::new(0),
    fetch_failures: AtomicU64::new(0),
    fetch_micros: AtomicU64::new(0),
    fetch_max_micros: AtomicU64::new(0),
};

pub(crate) fn counters() -> CacheCounters {
    let c = &COUNTERS;
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    CacheCounters {
        limit: l(&c.limit),
        bytes: l(&c.bytes),
        evictions: l(&c.evictions),
        evicted_bytes: l(&c.evicted_bytes),
        fetches: l(&c.fetches),
        fetch_bytes: l(&c.fetch_bytes),
        fetch_failures: l(&c.fetch_failures),
        fetch_micros: l(&c.fetch_micros),
        fetch_max_micros: l(&c.fetch_max_micros),
    }
}

static ACTIVE: RwLock<Option<Arc<LocalCache>>> = RwLock::new(None);

/// Makes `cache` the one readers use (None: no cache).
pub(crate) fn install(cache: Option<Arc<LocalCache>>) {
    COUNTERS
        .limit
        .store(cache.as_ref().map_or(0, |c| c.limit), Ordering::Relaxed);
    *crate::sync::write(&ACTIVE) = cache;
}

fn active() -> Option<Arc<LocalCache>> {
    read(&ACTIVE).clone()
}

/// Whether a cache is installed (`run --cache-size`): then files may be evicted and readers
/// must not keep them open.
pub(crate) fn is_active() -> bool {
    read(&ACTIVE).is_some()
}

/// Reads `buf.len()` bytes at `offset` of the local file `path`: from the file when it is
/// there (noting the read for the eviction order), from the bucket when the cache evicted it.
/// A file that is neither there nor evicted is NotFound, as a plain read would say.
pub(crate) fn read_exact_at(path: &Path, buf: &mut [u8], offset: u64) -> io::Result<()> {
    match File::open(path) {
        Ok(f) => {
            if let Some(c) = active() {
                c.touch(path);
            }
            f.read_exact_at(buf, offset)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // The stub is written before the file is removed: a file gone by eviction
            // always has one.
            if !stub_path(path).exists() {
                return Err(e);
            }
            match active() {
                Some(c) => c.fetch(path, buf, offset).map_err(|e| match e {
                    CacheError::Io { source, .. }
                        if source.kind() == io::ErrorKind::UnexpectedEof =>
                    {
                        source
                    }
                    e => io::Error::other(e),
                }),
                None => Err(io::Error::other(CacheError::NoCache {
                    path: path.to_path_buf(),
                })),
            }
        }
        Err(e) => Err(e),
    }
}

/// The length an evicted base or WAL file had (its stub's content).
pub(crate) fn stub_length(stub: &Path) -> Option<u64> {
    fs::read_to_string(stub).ok()?.trim().parse().ok()
}

/// Writes the stub of an evicted base or WAL file of `len` bytes.
pub(crate) fn write_stub(stub: &Path, len: u64) -> io::Result<()> {
    write_stub_bytes(stub, format!("{len}\n").as_bytes())
}

/// Writes `stub` durably (temporary file, fsync, rename, fsync of the directory).
fn write_stub_bytes(stub: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = stub.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = super::private_file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, stub)?;
    if let Some(dir) = stub.parent() {
        super::sync_dir(dir)?;
    }
    Ok(())
}

/// Evicts `path`: its stub (`stub_bytes`) is durable before the file goes.
pub(crate) fn evict_file(path: &Path, stub_bytes: &[u8]) -> io::Result<()> {
    let stub = stub_path(path);
    write_stub_bytes(&stub, stub_bytes)?;
    match fs::remove_file(path) {
        Ok(()) => {}
        // Removed meanwhile (retention, compaction): the stub must not outlive it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let _ = fs::remove_file(&stub);
        }
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        super::sync_dir(dir)?;
    }
    Ok(())
}

/// Removes `path` or, when it was evicted, its stub (retention and compaction deleting a
/// file); NotFound for neither is not an error.
pub(crate) fn remove_file_or_stub(path: &Path) -> io::Result<bool> {
    let mut removed = false;
    for p in [path.to_path_buf(), stub_path(path)] {
        match fs::remove_file(&p) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// What kind of file a path under the data directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Base,
    Wal,
    Image(u32),
}

/// One eviction candidate.
struct Candidate {
    recency: u64,
    size: u64,
    path: PathBuf,
    kind: Kind,
}

/// The bounded cache of one data directory.
pub(crate) struct LocalCache {
    remote: Arc<Remote>,
    /// The running helper's uploader (what the bucket holds now); None for an offline
    /// reader, which never evicts and finds image pieces in `listed_images`.
    uploader: Option<Arc<WalUploader>>,
    listed_images: remote::ImagePieces,
    data_dir: PathBuf,
    limit: u64,
    timeline: u32,
    segment_size: u32,
    /// Last read of each local file, in nanoseconds since the epoch.
    last_read: Mutex<HashMap<PathBuf, u64>>,
    /// Recently fetched WAL blocks: (segment object key, block number, bytes).
    wal_blocks: Mutex<VecDeque<(String, u64, Bytes)>>,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl LocalCache {
    pub(crate) fn new(
        uploader: Arc<WalUploader>,
        data_dir: &Path,
        limit: u64,
        timeline: u32,
        segment_size: u32,
    ) -> Arc<LocalCache> {
        Arc::new(LocalCache {
            remote: Arc::clone(uploader.remote()),
            uploader: Some(uploader),
            listed_images: remote::ImagePieces::new(),
            data_dir: data_dir.to_path_buf(),
            limit,
            timeline,
            segment_size,
            last_read: Mutex::new(HashMap::new()),
            wal_blocks: Mutex::new(VecDeque::new()),
        })
    }

    /// A cache that only reads evicted files back (offline commands such as `check`): what
    /// the bucket holds is listed once.
    pub(crate) fn reader(
        remote: Arc<Remote>,
        data_dir: &Path,
        timeline: u32,
        segment_size: u32,
    ) -> Result<Arc<LocalCache>, remote::RemoteError> {
        let listed_images = remote.image_piece_map()?;
        Ok(Arc::new(LocalCache {
            remote,
            uploader: None,
            listed_images,
            data_dir: data_dir.to_path_buf(),
            limit: u64::MAX,
            timeline,
            segment_size,
            last_read: Mutex::new(HashMap::new()),
            wal_blocks: Mutex::new(VecDeque::new()),
        }))
    }

    fn remote(&self) -> &Remote {
        &self.remote
    }

    fn image_piece(&self, n: u32, offset: u64, len: u64) -> Option<(String, u64)> {
        match &self.uploader {
            Some(u) => u.image_piece(n, offset, len),
            None => remote::image_piece_in(&self.listed_images, n, offset, len)
                .map(|(start, at)| (self.remote.image_piece_key(n, start), at)),
        }
    }

    fn touch(&self, path: &Path) {
        let now = now_nanos();
        let mut m = lock(&self.last_read);
        match m.get_mut(path) {
            Some(t) => *t = now,
            None => {
                m.insert(path.to_path_buf(), now);
            }
        }
    }

    fn kind_of(&self, path: &Path) -> Option<(Kind, String)> {
        let rel = path.strip_prefix(&self.data_dir).ok()?;
        let rel_s = rel.to_str()?;
        let mut parts = rel_s.split('/');
        match parts.next()? {
            "base" => Some((Kind::Base, rel_s.to_string())),
            "wal" => Some((Kind::Wal, parts.next()?.to_string())),
            "images" => {
                let name = parts.next()?;
                let n = name
                    .strip_prefix("images-")?
                    .strip_suffix(".dat")?
                    .parse()
                    .ok()?;
                Some((Kind::Image(n), name.to_string()))
            }
            _ => None,
        }
    }

    /// Reads an evicted file's bytes from the object it was uploaded as.
    fn fetch(&self, path: &Path, buf: &mut [u8], offset: u64) -> Result<(), CacheError> {
        let fail = |key: &str, reason: String| {
            COUNTERS.fetch_failures.fetch_add(1, Ordering::Relaxed);
            CacheError::Fetch {
                path: path.to_path_buf(),
                key: key.to_string(),
                reason,
            }
        };
        let Some((kind, name)) = self.kind_of(path) else {
            return Err(fail("?", "not a file the cache evicts".into()));
        };
        let len = buf.len() as u64;
        match kind {
            Kind::Base | Kind::Wal
                if stub_length(&stub_path(path)).is_some_and(|l| offset + len > l) =>
            {
                // Past the end of what was evicted: as a read past a short local file.
                Err(CacheError::Io {
                    path: path.to_path_buf(),
                    source: io::ErrorKind::UnexpectedEof.into(),
                })
            }
            Kind::Base => {
                let key = remote::base_key(&name);
                self.get_range_into(&key, offset, buf)
                    .map_err(|r| fail(&key, r))
            }
            Kind::Image(n) => {
                let Some((key, at)) = self.image_piece(n, offset, len) else {
                    return Err(fail(
                        &self.remote.image_piece_key(n, offset),
                        format!("no uploaded piece holds bytes {offset}..{}", offset + len),
                    ));
                };
                self.get_range_into(&key, at, buf)
                    .map_err(|r| fail(&key, r))
            }
            Kind::Wal => {
                let key = remote::wal_segment_key(&name);
                let seg = u64::from(self.segment_size);
                let mut done = 0usize;
                while done < buf.len() {
                    let pos = offset + done as u64;
                    let block = pos / WAL_BLOCK;
                    let bytes = self
                        .wal_block(&key, block, seg)
                        .map_err(|r| fail(&key, r))?;
                    let from = (pos - block * WAL_BLOCK) as usize;
                    let n = (buf.len() - done).min(bytes.len().saturating_sub(from));
                    if n == 0 {
                        return Err(fail(&key, format!("has no byte {pos}")));
                    }
                    buf[done..done + n].copy_from_slice(&bytes[from..from + n]);
                    done += n;
                }
                Ok(())
            }
        }
    }

    /// One block of a WAL segment object, from memory or the bucket.
    fn wal_block(&self, key: &str, block: u64, seg: u64) -> Result<Bytes, String> {
        if let Some((_, _, b)) = lock(&self.wal_blocks)
            .iter()
            .find(|(k, n, _)| k == key && *n == block)
        {
            return Ok(b.clone());
        }
        let start = block * WAL_BLOCK;
        let end = (start + WAL_BLOCK).min(seg);
        let mut buf = vec![0u8; end.saturating_sub(start) as usize];
        self.get_range_into(key, start, &mut buf)?;
        let bytes = Bytes::from(buf);
        let mut blocks = lock(&self.wal_blocks);
        blocks.push_back((key.to_string(), block, bytes.clone()));
        while blocks.len() > WAL_BLOCKS_KEPT {
            blocks.pop_front();
        }
        Ok(bytes)
    }

    /// A ranged GET of exactly `buf.len()` bytes at `offset` of `key`, counted.
    fn get_range_into(&self, key: &str, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let started = Instant::now();
        let got = self
            .remote()
            .get_range(key, offset..offset + buf.len() as u64)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the object is not in the bucket".to_string())?;
        if got.len() != buf.len() {
            return Err(format!(
                "{} bytes at {offset}, {} asked for",
                got.len(),
                buf.len()
            ));
        }
        buf.copy_from_slice(&got);
        let micros = started.elapsed().as_micros() as u64;
        COUNTERS.fetches.fetch_add(1, Ordering::Relaxed);
        COUNTERS
            .fetch_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        COUNTERS.fetch_micros.fetch_add(micros, Ordering::Relaxed);
        COUNTERS
            .fetch_max_micros
            .fetch_max(micros, Ordering::Relaxed);
        Ok(())
    }

    /// Recency of a local file: its last read, else its modification time.
    fn recency(&self, path: &Path, md: &fs::Metadata) -> u64 {
        if let Some(t) = lock(&self.last_read).get(path) {
            return *t;
        }
        md.modified()
            .ok()
            .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64)
    }

    /// Every local file the bucket holds and the cache may evict.
    fn candidates(
        &self,
        uploader: &WalUploader,
        store: &PageStore,
    ) -> Result<Vec<Candidate>, CacheError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        let mut out = Vec::new();
        // Base files: all in the bucket once `helper.json` is (the cache is installed after
        // `ensure_bootstrap` or a restore).
        let base = self.data_dir.join("base");
        let mut stack = vec![base];
        while let Some(d) = stack.pop() {
            let entries = match fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&d)(e)),
            };
            for e in entries {
                let e = e.map_err(io(&d))?;
                let Ok(md) = e.metadata() else { continue };
                if md.is_dir() {
                    stack.push(e.path());
                    continue;
                }
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                if crate::pgdata::relpath::RelationFileName::parse(name).is_none() {
                    continue;
                }
                let path = e.path();
                out.push(Candidate {
                    recency: self.recency(&path, &md),
                    size: md.len(),
                    path,
                    kind: Kind::Base,
                });
            }
        }
        // WAL: complete segments the bucket holds, but the newest few.
        let seg = u64::from(self.segment_size);
        let uploaded_segno = uploader.uploaded().0 / seg;
        let wal_dir = self.data_dir.join("wal");
        for e in fs::read_dir(&wal_dir).map_err(io(&wal_dir))? {
            let e = e.map_err(io(&wal_dir))?;
            let name = e.file_name();
            let Some((tli, segno)) = name
                .to_str()
                .and_then(|n| parse_segment_file_name(n, self.segment_size))
            else {
                continue;
            };
            if tli != self.timeline || segno + KEEP_NEWEST_WAL >= uploaded_segno {
                continue;
            }
            let Ok(md) = e.metadata() else { continue };
            let path = e.path();
            out.push(Candidate {
                recency: self.recency(&path, &md),
                size: md.len(),
                path,
                kind: Kind::Wal,
            });
        }
        // Image files: not the current one, all bytes uploaded, no damaged entry.
        let images = read(&store.images);
        let dir = images.dir().to_path_buf();
        let current = images.current_file_number();
        for (n, len) in images.file_lengths() {
            let path = super::images::file_path(&dir, n);
            if n == current
                || uploader.image_bytes_uploaded(n) < len
                || images.damaged.iter().any(|d| d.path == path)
            {
                continue;
            }
            let Ok(md) = fs::metadata(&path) else {
                continue;
            };
            out.push(Candidate {
                recency: self.recency(&path, &md),
                size: md.len(),
                path,
                kind: Kind::Image(n),
            });
        }
        Ok(out)
    }

    /// One pass: evicts the coldest candidates until their bytes are within the bound.
    pub(crate) fn evict_pass(&self, store: &PageStore) -> Result<u64, CacheError> {
        let Some(uploader) = &self.uploader else {
            return Ok(0);
        };
        let mut candidates = self.candidates(uploader, store)?;
        let mut total: u64 = candidates.iter().map(|c| c.size).sum();
        if total <= self.limit {
            COUNTERS.bytes.store(total, Ordering::Relaxed);
            return Ok(0);
        }
        candidates.sort_by_key(|c| c.recency);
        let mut evicted = 0u64;
        for c in candidates {
            if total <= self.limit {
                break;
            }
            let io = |source| CacheError::Io {
                path: c.path.clone(),
                source,
            };
            match c.kind {
                Kind::Base | Kind::Wal => {
                    evict_file(&c.path, format!("{}\n", c.size).as_bytes()).map_err(io)?
                }
                Kind::Image(n) => {
                    // Under the image store's lock: compaction (which removes files) waits.
                    let images = read(&store.images);
                    if !images.evict_file(n).map_err(|e| CacheError::Io {
                        path: c.path.clone(),
                        source: io::Error::other(e.to_string()),
                    })? {
                        continue;
                    }
                }
            }
            lock(&self.last_read).remove(&c.path);
            total = total.saturating_sub(c.size);
            evicted += 1;
            COUNTERS.evictions.fetch_add(1, Ordering::Relaxed);
            COUNTERS.evicted_bytes.fetch_add(c.size, Ordering::Relaxed);
        }
        COUNTERS.bytes.store(total, Ordering::Relaxed);
        Ok(evicted)
    }

    /// Runs [`LocalCache::evict_pass`] every [`EVICT_INTERVAL`] on a thread of its own.
    pub(crate) fn spawn(self: &Arc<Self>, store: Arc<PageStore>) {
        let me = Arc::clone(self);
        let spawned =
            crate::sync::supervise::spawn("cache-evict".into(), "cache-evict", move || {
                let mut failing = false;
                loop {
                    match me.evict_pass(&store) {
                        Ok(_) => failing = false,
                        Err(e) => {
                            if !failing {
                                log::warn!("local cache: eviction failed: {e}");
                            }
                            failing = true;
                        }
                    }
                    std::thread::sleep(EVICT_INTERVAL);
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the cache eviction thread: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stubs_sit_beside_their_files_and_hold_lengths() {
        let dir = std::env::temp_dir().join(format!("fpw-cache-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("16384.1");
        fs::write(&f, vec![7u8; 8192 * 3]).unwrap();
        assert_eq!(stub_path(&f), dir.join("16384.1.evicted"));
        evict_file(&f, b"24576\n").unwrap();
        assert!(!f.exists());
        assert_eq!(stub_length(&stub_path(&f)), Some(24576));
        // Without an installed cache an evicted file is an error that names it, not absent.
        let mut buf = [0u8; 8];
        let e = read_exact_at(&f, &mut buf, 0).unwrap_err();
        assert_ne!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("16384.1"), "{e}");
        assert!(remove_file_or_stub(&f).unwrap());
        assert_eq!(
            read_exact_at(&f, &mut buf, 0).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
