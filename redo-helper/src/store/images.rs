//! Generated page images: append-only files of entries, each an 8 KB page at an LSN with a
//! CRC of our own (crc32fast), plus an in-memory index rebuilt by scanning the files at
//! start-up. A torn tail after `kill -9` (entries after the last sync: a partial entry, or
//! whole entries failing their CRC up to the end of the newest file) is cut off.
//!
//! Images are stored packed with LZ4: at an image every 16 changes, a page's images would
//! otherwise take several times the WAL they bound. The free space between `pd_lower` and
//! `pd_upper` is zeros and tuples repeat their layout, so pages shrink by what they hold
//! (measured on data files: pgbench_accounts 8.8x, btree, GIN and GiST pages 2-4x, the
//! TPC-C-like customer and stock rows of random strings 1.1-1.3x). A page LZ4 does not
//! shrink is stored as it is. Packing costs 2-10 us of CPU per image written and 0.5-5 us
//! per image read.
//!
//! A damaged entry anywhere else is kept in [`ImageStore::damaged`]. Before retention has
//! removed any history, images are a cache of what the WAL still determines: the store
//! opener quarantines such entries ([`ImageStore::quarantine_damaged`], a tombstone magic,
//! so later scans skip them knowingly) and the image is generated again. After retention an
//! image may be the only record of a page's history before the horizon: then a damaged
//! entry is an error and the store does not open, rather than serve a page rebuilt from
//! the base backup and only the changes after the horizon. Retention syncs images, and the
//! directory, before it deletes the WAL they replace ([`ImageStore::sync`]).
//!
//! Entry layout (little endian), 36 bytes of header then the stored page:
//! magic u32, spc u32, db u32, rel u32, fork u8, codec u8, stored length u16, block u32,
//! lsn u64, crc u32.
//! - `FPWP` (written now): codec 0 (the page as it is) or 1 (an LZ4 block), the stored
//!   length 1..=8192 bytes; the CRC covers bytes 4..32 of the header (key, codec, length and
//!   LSN) and the stored bytes, so a damaged length is caught before it is trusted.
//! - `FPWI` (written before packing; read, never written): the page as it is, 8192 bytes;
//!   the CRC covers bytes 4..28 (key and the low half of the LSN) and the page.
//!
//! An entry's length comes from its own header, so a damaged `FPWP` header leaves the
//! entries after it in that file without a frame: the scan looks further for any intact
//! entry, to tell damage in the middle (reported, and quarantined with a tombstone that
//! covers the rest of the file) from a torn tail (cut off).

use crate::wal::block::{ForkNumber, PageKey, RelFileLocator};
use crate::wal::page::{BLCKSZ, Lsn};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// An unpacked page, written before images were packed (read only).
const MAGIC_PLAIN: u32 = 0x4650_5749; // "FPWI"
/// A packed entry: codec and stored length in the header.
const MAGIC_PACKED: u32 = 0x4650_5750; // "FPWP"
/// A damaged `FPWI` entry quarantined while images were only a cache: skipped (its length
/// is fixed) without warning.
const MAGIC_QUARANTINED: u32 = 0x4650_5758; // "FPWX"
/// A damaged entry whose length cannot be trusted, quarantined while images were only a
/// cache: the rest of its file is skipped without warning (its images were generated again
/// in newer files).
const MAGIC_QUARANTINED_REST: u32 = 0x4650_5752; // "FPWR"
const CODEC_NONE: u8 = 0;
const CODEC_LZ4: u8 = 1;
const HEADER: usize = 36;
/// The largest entry: a header and a page stored as it is. Space checks count images at
/// this size, an upper bound of what packing stores.
pub(crate) const ENTRY_SIZE: usize = HEADER + BLCKSZ;
/// Entries per file before a new one is started (at most 64 MB): retention reclaims space a
/// whole file at a time, so files are kept moderate.
pub(crate) const DEFAULT_ENTRIES_PER_FILE: u64 = 8_192;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ImageStoreError {
    #[error("image store {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("image of {key} at {lsn} in {path} fails its CRC")]
    Corrupt {
        key: PageKey,
        lsn: Lsn,
        path: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ImageLocation {
    lsn: Lsn,
    file: u32,
    /// The entry's length (header and stored page).
    len: u32,
    offset: u64,
}

/// An image file's entries (live or not, tombstones included) and bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct FileExtent {
    entries: u64,
    bytes: u64,
}

pub(crate) struct ImageStore {
    dir: PathBuf,
    /// Per page, images sorted by LSN.
    index: HashMap<PageKey, Vec<ImageLocation>>,
    current: u32,
    current_file: File,
    entries_per_file: u64,
    /// Every image file, the current one included.
    files: BTreeMap<u32, FileExtent>,
    /// Images in the index (readable).
    pub images: u64,
    /// Bytes of the image files on disk.
    pub bytes: u64,
    /// Entries found damaged at open, not at the torn tail (see the module documentation).
    pub damaged: Vec<DamagedEntry>,
    /// Image files opened for reads, by number (see `file_for_read`).
    open_for_read: Mutex<HashMap<u32, Arc<File>>>,
    /// The entry `put` packs a page into, kept between calls.
    packed: Vec<u8>,
}

/// An image entry that fails its CRC (or magic) in the middle of the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DamagedEntry {
    pub path: PathBuf,
    pub offset: u64,
    /// Its length could not be trusted, so the rest of the file was not read.
    pub rest_of_file: bool,
}

impl std::fmt::Display for DamagedEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at offset {}", self.path.display(), self.offset)?;
        if self.rest_of_file {
            write!(f, " (and the rest of the file)")?;
        }
        Ok(())
    }
}

/// What `compact` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompactStats {
    pub files_removed: u64,
    pub entries_moved: u64,
    pub bytes_freed: u64,
}

/// An image entry's place (see [`ImageStore::locate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocatedImage {
    key: PageKey,
    lsn: Lsn,
    file: u32,
    len: u32,
    offset: u64,
    path: PathBuf,
}

impl LocatedImage {
    fn io_err(&self) -> impl Fn(io::Error) -> ImageStoreError + '_ {
        |source| ImageStoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Checks an entry read from here (its key, LSN and CRC) and unpacks its page.
    fn check_into(&self, entry: &[u8], page: &mut [u8]) -> Result<(), ImageStoreError> {
        let (k, l) = decode_header(entry);
        if k != self.key || l != self.lsn || !unpack_into(entry, page) {
            return Err(ImageStoreError::Corrupt {
                key: self.key,
                lsn: self.lsn,
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// Reads the entry through the local cache (a ranged GET when its file was evicted)
    /// into `page`, checked. Called without the store's lock.
    pub(crate) fn read_into(&self, page: &mut [u8]) -> Result<(), ImageStoreError> {
        let mut buf = [0u8; ENTRY_SIZE];
        let entry = &mut buf[..self.len as usize];
        super::cache::read_exact_at(&self.path, entry, self.offset).map_err(self.io_err())?;
        self.check_into(entry, page)
    }
}

/// A file to compact away and its live entries when planned ([`ImageStore::plan_compaction`]).
pub(crate) struct CompactionPlan {
    file: u32,
    path: PathBuf,
    entries: Vec<(PageKey, ImageLocation)>,
}

impl CompactionPlan {
    /// The planned live entries (header and stored page), by offset, when the local cache
    /// evicted the file: each is a GET from the bucket, made here without the store's lock.
    /// A local file gives none: [`ImageStore::finish_compaction`] copies its entries from the
    /// page cache under the lock, through one buffer, as fast as buffering them here would be
    /// and without holding up to half a file in memory.
    pub(crate) fn read_live(&self) -> Result<HashMap<u64, Vec<u8>>, ImageStoreError> {
        if self.path.exists() {
            return Ok(HashMap::new());
        }
        self.entries
            .iter()
            .map(|(_, loc)| {
                let mut buf = vec![0u8; loc.len as usize];
                super::cache::read_exact_at(&self.path, &mut buf, loc.offset).map_err(
                    |source| ImageStoreError::Io {
                        path: self.path.clone(),
                        source,
                    },
                )?;
                Ok((loc.offset, buf))
            })
            .collect()
    }
}

pub(crate) fn file_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("images-{n:06}.dat"))
}

/// Opens (creating) the image file appends go to.
fn open_for_append(path: &Path) -> io::Result<File> {
    super::private_file_options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// How long the entry starting with header `h` is, as far as its header tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// An image entry of this many bytes (header included), to be checked by its CRC.
    Image(usize),
    /// A quarantined `FPWI` entry (ENTRY_SIZE bytes).
    Quarantined,
    /// A quarantined entry of unknown length: the rest of the file.
    QuarantinedRest,
    /// Not an entry's header, or one whose length is impossible.
    Unknown,
}

fn frame_of(h: &[u8]) -> Frame {
    match u32_at(h, 0) {
        MAGIC_PLAIN => Frame::Image(ENTRY_SIZE),
        MAGIC_PACKED => {
            let stored = usize::from(u16::from_le_bytes([h[18], h[19]]));
            if (1..=BLCKSZ).contains(&stored) && h[17] <= CODEC_LZ4 {
                Frame::Image(HEADER + stored)
            } else {
                Frame::Unknown
            }
        }
        MAGIC_QUARANTINED => Frame::Quarantined,
        MAGIC_QUARANTINED_REST => Frame::QuarantinedRest,
        _ => Frame::Unknown,
    }
}

/// The CRC an entry's header must carry (see the module documentation for what it covers).
fn entry_crc(entry: &[u8]) -> u32 {
    let covered = if u32_at(entry, 0) == MAGIC_PLAIN {
        4..28
    } else {
        4..32
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&entry[covered]);
    h.update(&entry[HEADER..]);
    h.finalize()
}

/// Whether `entry` (exactly one entry's bytes) is an image entry whose CRC matches.
fn entry_is_intact(entry: &[u8]) -> bool {
    entry.len() > HEADER
        && frame_of(entry) == Frame::Image(entry.len())
        && entry_crc(entry) == u32_at(entry, 32)
}

/// Unpacks a whole entry's page into `page` (BLCKSZ bytes): false when the entry is not
/// intact or does not unpack to exactly one page.
fn unpack_into(entry: &[u8], page: &mut [u8]) -> bool {
    if !entry_is_intact(entry) || page.len() != BLCKSZ {
        return false;
    }
    let stored = &entry[HEADER..];
    if u32_at(entry, 0) == MAGIC_PLAIN || entry[17] == CODEC_NONE {
        if stored.len() != BLCKSZ {
            return false;
        }
        page.copy_from_slice(stored);
        return true;
    }
    matches!(lz4_flex::block::decompress_into(stored, page), Ok(n) if n == BLCKSZ)
}

/// Packs `page` as the entry of `key` at `lsn` into `out` (cleared first): LZ4 when that
/// makes it smaller, else the page as it is.
fn pack_entry(key: &PageKey, lsn: Lsn, page: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.resize(HEADER + lz4_flex::block::get_maximum_output_size(BLCKSZ), 0);
    let codec = match lz4_flex::block::compress_into(page, &mut out[HEADER..]) {
        Ok(n) if n < BLCKSZ => {
            out.truncate(HEADER + n);
            CODEC_LZ4
        }
        _ => {
            out.truncate(HEADER);
            out.extend_from_slice(page);
            CODEC_NONE
        }
    };
    let stored = (out.len() - HEADER) as u16; // at most BLCKSZ
    out[0..4].copy_from_slice(&MAGIC_PACKED.to_le_bytes());
    out[4..8].copy_from_slice(&key.rel.spc_oid.to_le_bytes());
    out[8..12].copy_from_slice(&key.rel.db_oid.to_le_bytes());
    out[12..16].copy_from_slice(&key.rel.rel_number.to_le_bytes());
    out[16] = key.fork.0;
    out[17] = codec;
    out[18..20].copy_from_slice(&stored.to_le_bytes());
    out[20..24].copy_from_slice(&key.block.to_le_bytes());
    out[24..32].copy_from_slice(&lsn.0.to_le_bytes());
    let crc = entry_crc(out);
    out[32..36].copy_from_slice(&crc.to_le_bytes());
}

fn decode_header(h: &[u8]) -> (PageKey, Lsn) {
    let key = PageKey {
        rel: RelFileLocator {
            spc_oid: u32_at(h, 4),
            db_oid: u32_at(h, 8),
            rel_number: u32_at(h, 12),
        },
        fork: ForkNumber(h[16]),
        block: u32_at(h, 20),
    };
    let lsn = Lsn(u64::from(u32_at(h, 24)) | (u64::from(u32_at(h, 28)) << 32));
    (key, lsn)
}

/// What a scan of one image file found.
#[derive(Default)]
struct FileScan {
    found: Vec<(PageKey, ImageLocation)>,
    entries: u64,
    /// Bytes to keep: a torn tail after them is cut off.
    keep: u64,
    /// Damaged entries (offset, rest of the file).
    damaged: Vec<(u64, bool)>,
}

/// Scans image file `n` (`len` bytes), the newest file when `newest` (whose unsynced tail
/// may be torn).
fn scan_file(f: &File, n: u32, len: u64, newest: bool) -> io::Result<FileScan> {
    let mut buf = vec![0u8; ENTRY_SIZE];
    let mut scan = FileScan::default();
    let mut offset = 0u64;
    // The end of the last entry that checked out (or a tombstone).
    let mut good_end = 0u64;
    // Where an entry that could not be framed starts, with nothing intact after it, and
    // whether it is a partial entry (its header's length runs past the end of the file).
    let mut tail: Option<(u64, bool)> = None;
    while offset < len {
        let avail = len - offset;
        let frame = if avail >= HEADER as u64 {
            f.read_exact_at(&mut buf[..HEADER], offset)?;
            frame_of(&buf[..HEADER])
        } else {
            Frame::Unknown
        };
        let partial = match frame {
            Frame::QuarantinedRest => {
                scan.entries += 1;
                good_end = len;
                break;
            }
            Frame::Quarantined if avail >= ENTRY_SIZE as u64 => {
                scan.entries += 1;
                offset += ENTRY_SIZE as u64;
                good_end = offset;
                continue;
            }
            Frame::Image(size) if avail >= size as u64 => {
                let entry = &mut buf[..size];
                f.read_exact_at(entry, offset)?;
                if entry_is_intact(entry) {
                    let (key, lsn) = decode_header(entry);
                    scan.found.push((
                        key,
                        ImageLocation {
                            lsn,
                            file: n,
                            len: size as u32,
                            offset,
                        },
                    ));
                    scan.entries += 1;
                    offset += size as u64;
                    good_end = offset;
                    continue;
                }
                if u32_at(entry, 0) == MAGIC_PLAIN {
                    // A fixed length: the entries after it are still framed.
                    scan.damaged.push((offset, false));
                    scan.entries += 1;
                    offset += size as u64;
                    continue;
                }
                false
            }
            Frame::Quarantined | Frame::Image(_) => true,
            Frame::Unknown => avail < HEADER as u64,
        };
        // The entry at `offset` has no frame to trust: damage in the middle if anything
        // intact follows it, else a torn tail.
        if intact_entry_after(f, offset + 1, len)? {
            scan.damaged.push((offset, true));
            scan.entries += 1;
            good_end = len;
        } else {
            tail = Some((offset, partial));
        }
        break;
    }
    scan.keep = len;
    if newest {
        // Appends after the last sync: damaged or partial entries after the last good one.
        scan.damaged.retain(|&(o, _)| o < good_end);
        scan.keep = good_end;
    } else if let Some((at, partial)) = tail {
        if partial {
            scan.keep = at;
        } else {
            scan.damaged.push((at, true));
            scan.entries += 1;
        }
    }
    Ok(scan)
}

/// Whether an intact image entry starts anywhere in `from..len` of `f` (a byte-by-byte
/// search for a magic whose entry checks out; run only after damage).
fn intact_entry_after(f: &File, from: u64, len: u64) -> io::Result<bool> {
    const WINDOW: usize = 1 << 20;
    let mut buf = vec![0u8; WINDOW + ENTRY_SIZE];
    let mut start = from;
    while start + HEADER as u64 <= len {
        let n = (len - start).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], start)?;
        // Positions whose header lies in this window (the next window overlaps the last
        // ENTRY_SIZE bytes, so an entry is never cut in two).
        let last = if start + n as u64 == len { n } else { WINDOW };
        for i in 0..last.min(n.saturating_sub(HEADER - 1)) {
            let magic = u32_at(&buf, i);
            if magic != MAGIC_PLAIN && magic != MAGIC_PACKED {
                continue;
            }
            if let Frame::Image(size) = frame_of(&buf[i..i + HEADER])
                && i + size <= n
                && entry_is_intact(&buf[i..i + size])
            {
                return Ok(true);
            }
        }
        if start + n as u64 == len {
            break;
        }
        start += WINDOW as u64;
    }
    Ok(false)
}

impl ImageStore {
    /// Opens the store, scanning every file; a torn or corrupt tail is truncated.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path) -> Result<ImageStore, ImageStoreError> {
        Self::open_with(dir, DEFAULT_ENTRIES_PER_FILE)
    }

    /// Like `open`, starting a new file every `entries_per_file` entries.
    pub(crate) fn open_with(
        dir: &Path,
        entries_per_file: u64,
    ) -> Result<ImageStore, ImageStoreError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageStoreError::Io { path, source }
        };
        super::create_private_dir_all(dir).map_err(io_err(dir))?;
        let mut numbers: Vec<u32> = Vec::new();
        // Files the local cache evicted: their stubs hold the entries' headers.
        let mut evicted: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
        for e in fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("images-") else {
                continue;
            };
            if let Some(n) = rest.strip_suffix(".dat").and_then(|n| n.parse().ok()) {
                numbers.push(n);
            } else if let Some(n) = rest
                .strip_suffix(".dat.evicted")
                .and_then(|n| n.parse::<u32>().ok())
            {
                evicted.insert(n);
            }
        }
        numbers.sort_unstable();
        // A crash between writing a stub and removing its file left both: the file wins.
        for n in &numbers {
            if evicted.remove(n) {
                let stub = super::cache::stub_path(&file_path(dir, *n));
                fs::remove_file(&stub).map_err(io_err(&stub))?;
            }
        }
        let mut index: HashMap<PageKey, Vec<ImageLocation>> = HashMap::new();
        let mut files = BTreeMap::new();
        let mut damaged = Vec::new();
        let newest = numbers.last().copied();
        for &n in &numbers {
            let path = file_path(dir, n);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let len = f.metadata().map_err(io_err(&path))?.len();
            let scan = scan_file(&f, n, len, Some(n) == newest).map_err(io_err(&path))?;
            // Every entry found ends before what the scan keeps.
            for (key, loc) in scan.found {
                index.entry(key).or_default().push(loc);
            }
            for (offset, rest_of_file) in scan.damaged {
                log::warn!(
                    "image store: damaged entry at offset {offset} of {}{}",
                    path.display(),
                    if rest_of_file {
                        " (its length cannot be trusted: the rest of the file is not read)"
                    } else {
                        ""
                    }
                );
                damaged.push(DamagedEntry {
                    path: path.clone(),
                    offset,
                    rest_of_file,
                });
            }
            if scan.keep != len {
                log::warn!(
                    "image store: cutting {} torn bytes off {}",
                    len - scan.keep,
                    path.display()
                );
                f.set_len(scan.keep).map_err(io_err(&path))?;
            }
            files.insert(
                n,
                FileExtent {
                    entries: scan.entries,
                    bytes: scan.keep,
                },
            );
        }
        for &n in &evicted {
            let stub = super::cache::stub_path(&file_path(dir, n));
            let headers = fs::read(&stub).map_err(io_err(&stub))?;
            let mut extent = FileExtent::default();
            for h in headers.chunks_exact(HEADER) {
                // The page is in the bucket: its CRC is checked when it is read.
                let size = match frame_of(h) {
                    Frame::Image(size) => {
                        let (key, lsn) = decode_header(h);
                        index.entry(key).or_default().push(ImageLocation {
                            lsn,
                            file: n,
                            len: size as u32,
                            offset: extent.bytes,
                        });
                        size
                    }
                    Frame::Quarantined => ENTRY_SIZE,
                    Frame::QuarantinedRest | Frame::Unknown => break,
                };
                extent.entries += 1;
                extent.bytes += size as u64;
            }
            files.insert(n, extent);
        }
        for v in index.values_mut() {
            // Files in order, so on equal LSNs the copy in the newest file (a compaction that
            // was cut short by a crash left the old one) is kept.
            v.sort_by_key(|l| (l.lsn, std::cmp::Reverse(l.file)));
            v.dedup_by_key(|l| l.lsn);
        }
        let images = index.values().map(|v| v.len() as u64).sum();
        let newest_evicted = evicted.last().copied();
        let mut current = numbers.last().copied().unwrap_or(0);
        if newest_evicted.is_some_and(|e| numbers.is_empty() || e >= current) {
            // Never append to an evicted file: start a new one after it.
            current = newest_evicted.unwrap_or(0) + 1;
        }
        files.entry(current).or_default();
        let path = file_path(dir, current);
        let current_file = open_for_append(&path).map_err(io_err(&path))?;
        Ok(ImageStore {
            dir: dir.to_path_buf(),
            index,
            current,
            current_file,
            entries_per_file: entries_per_file.max(1),
            bytes: files.values().map(|e| e.bytes).sum(),
            files,
            images,
            damaged,
            open_for_read: Mutex::new(HashMap::new()),
            packed: Vec::with_capacity(ENTRY_SIZE + 64),
        })
    }

    /// Marks the damaged entries found at open as quarantined (a tombstone magic, synced):
    /// for use only while images are a cache (no history removed yet). A tombstone that
    /// covers the rest of the current file starts a new one, so that no append goes where
    /// the next scan would not read it.
    pub(crate) fn quarantine_damaged(&mut self) -> Result<(), ImageStoreError> {
        let current_path = file_path(&self.dir, self.current);
        let mut new_file = false;
        for d in std::mem::take(&mut self.damaged) {
            let io_err = |source| ImageStoreError::Io {
                path: d.path.clone(),
                source,
            };
            let f = OpenOptions::new()
                .write(true)
                .open(&d.path)
                .map_err(io_err)?;
            let magic = if d.rest_of_file {
                new_file |= d.path == current_path;
                MAGIC_QUARANTINED_REST
            } else {
                MAGIC_QUARANTINED
            };
            f.write_all_at(&magic.to_le_bytes(), d.offset)
                .map_err(io_err)?;
            f.sync_data().map_err(io_err)?;
            log::warn!("image store: quarantined the damaged entry {d} (it is regenerated)");
        }
        if new_file {
            self.start_new_file()?;
        }
        Ok(())
    }

    /// Appends an image of `key` as of `lsn`, packed. Durability is batched: see `sync`.
    pub(crate) fn put(
        &mut self,
        key: &PageKey,
        lsn: Lsn,
        page: &[u8],
    ) -> Result<(), ImageStoreError> {
        let mut packed = std::mem::take(&mut self.packed);
        pack_entry(key, lsn, page, &mut packed);
        let appended = self.append(&packed);
        self.packed = packed;
        let (file, offset) = appended?;
        let len = self.packed.len() as u32;
        let locs = self.index.entry(*key).or_default();
        let at = locs.partition_point(|l| l.lsn <= lsn);
        locs.insert(
            at,
            ImageLocation {
                lsn,
                file,
                len,
                offset,
            },
        );
        self.images += 1;
        Ok(())
    }

    /// Syncs the current file and starts the next one.
    fn start_new_file(&mut self) -> Result<(), ImageStoreError> {
        self.sync()?;
        self.current += 1;
        let path = file_path(&self.dir, self.current);
        self.current_file =
            open_for_append(&path).map_err(|source| ImageStoreError::Io { path, source })?;
        self.files.insert(self.current, FileExtent::default());
        Ok(())
    }

    /// Appends one whole entry to the current file, starting a new file when it is full;
    /// returns where it went.
    fn append(&mut self, entry: &[u8]) -> Result<(u32, u64), ImageStoreError> {
        if self.current_extent().entries >= self.entries_per_file {
            self.start_new_file()?;
        }
        let offset = self.current_extent().bytes;
        self.current_file
            .write_all_at(entry, offset)
            .map_err(|source| ImageStoreError::Io {
                path: file_path(&self.dir, self.current),
                source,
            })?;
        let extent = self.files.entry(self.current).or_default();
        extent.entries += 1;
        extent.bytes += entry.len() as u64;
        self.bytes += entry.len() as u64;
        Ok((self.current, offset))
    }

    fn current_extent(&self) -> FileExtent {
        self.files.get(&self.current).copied().unwrap_or_default()
    }

    /// Every page with at least one image.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &PageKey> {
        self.index.keys()
    }

    /// Retention: forgets the images no read at or after `horizon` can start from: of each
    /// page's images before the horizon, all but the newest, and that one too when
    /// `removed_after(key, lsn)` says the page was truncated away or dropped after it. Images
    /// at or after the horizon are kept. Only the in-memory index changes: `compact` gives
    /// the space back. Returns how many images were forgotten.
    pub(crate) fn forget_before(
        &mut self,
        horizon: Lsn,
        mut removed_after: impl FnMut(&PageKey, Lsn) -> bool,
    ) -> u64 {
        let mut forgotten = 0u64;
        self.index.retain(|key, locs| {
            let n = locs.partition_point(|l| l.lsn < horizon);
            if n == 0 {
                return true;
            }
            let mut drop = n - 1;
            if removed_after(key, locs[n - 1].lsn) {
                drop = n;
            }
            locs.drain(..drop);
            forgotten += drop as u64;
            !locs.is_empty()
        });
        self.images -= forgotten;
        forgotten
    }

    /// Gives back the space of forgotten images: a file (other than the one being appended
    /// to) with no image left is deleted; one with fewer than `min_live_ratio` of its entries
    /// still live has them copied to the current file (synced) and is then deleted. Works one
    /// file per call of `step` so the caller can release the lock in between; returns None
    /// when nothing is left to do. (Under one lock hold: see [`ImageStore::plan_compaction`]
    /// for the way that reads the live entries without it.)
    #[cfg(test)]
    pub(crate) fn compact_step(
        &mut self,
        min_live_ratio: f64,
    ) -> Result<Option<CompactStats>, ImageStoreError> {
        let Some(plan) = self.plan_compaction(min_live_ratio) else {
            return Ok(None);
        };
        let live = plan.read_live()?;
        self.finish_compaction(plan, live).map(Some)
    }

    /// The next file compaction would remove and where its live entries are. Their bytes are
    /// read with [`CompactionPlan::read_live`] outside the store's lock: the file may have been
    /// evicted by the local cache, and reading it back is a GET per entry from the bucket,
    /// which must not hold back every page read and image writer (only the retention thread
    /// compacts, and appends never go to a file other than the current one, so the plan stays
    /// valid but for entries forgotten in between).
    pub(crate) fn plan_compaction(&self, min_live_ratio: f64) -> Option<CompactionPlan> {
        // Counted first, collected for the chosen file only: retention plans once per file
        // it compacts, and a list of every entry would be allocated (and faulted in) each
        // time.
        let mut live: HashMap<u32, u64> = HashMap::with_capacity(self.files.len());
        for l in self.index.values().flatten() {
            if l.file != self.current {
                *live.entry(l.file).or_default() += 1;
            }
        }
        let file = self
            .files
            .iter()
            .filter(|(f, _)| **f != self.current)
            .map(|(f, e)| (*f, e.entries, live.get(f).copied().unwrap_or(0)))
            .find(|(_, total, n)| (*n as f64) < min_live_ratio * (*total as f64) || *n == 0)
            .map(|(f, _, _)| f)?;
        Some(CompactionPlan {
            file,
            path: file_path(&self.dir, file),
            entries: self.entries_in(file),
        })
    }

    /// The live entries stored in image file `file`.
    fn entries_in(&self, file: u32) -> Vec<(PageKey, ImageLocation)> {
        self.index
            .iter()
            .flat_map(|(key, locs)| {
                locs.iter()
                    .filter(|l| l.file == file)
                    .map(move |l| (*key, *l))
            })
            .collect()
    }

    /// Copies the planned file's live entries to the current file (synced before the
    /// originals go), points the index at the copies and deletes the file. `live` holds the
    /// entries [`CompactionPlan::read_live`] read, by offset; an entry still live that it
    /// lacks is read now.
    pub(crate) fn finish_compaction(
        &mut self,
        plan: CompactionPlan,
        live: HashMap<u64, Vec<u8>>,
    ) -> Result<CompactStats, ImageStoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageStoreError::Io { path, source }
        };
        let file = plan.file;
        let path = plan.path;
        // Still live now (forget_before may have dropped some since the plan).
        let still = self.entries_in(file);
        let mut stats = CompactStats::default();
        let mut moved = Vec::with_capacity(still.len());
        let mut buf = vec![0u8; ENTRY_SIZE];
        for (key, loc) in still {
            let entry = match live.get(&loc.offset) {
                Some(e) => e.as_slice(),
                None => {
                    let entry = &mut buf[..loc.len as usize];
                    super::cache::read_exact_at(&path, entry, loc.offset).map_err(io(&path))?;
                    &entry[..]
                }
            };
            // Copied as stored: the copy's reads check it as the original's would have.
            let to = self.append(entry)?;
            moved.push((key, loc.lsn, to));
        }
        if !moved.is_empty() {
            // The copies are durable before the originals go.
            self.sync()?;
        }
        for (key, lsn, (to_file, to_offset)) in moved {
            if let Some(l) = self
                .index
                .get_mut(&key)
                .and_then(|v| v.iter_mut().find(|l| l.lsn == lsn))
            {
                l.file = to_file;
                l.offset = to_offset;
            }
            stats.entries_moved += 1;
        }
        crate::sync::lock(&self.open_for_read).remove(&file);
        super::cache::remove_file_or_stub(&path).map_err(io(&path))?;
        super::sync_dir(&self.dir).map_err(io(&self.dir))?;
        let removed = self.files.remove(&file).unwrap_or_default();
        stats.files_removed = 1;
        stats.bytes_freed = removed.bytes;
        self.bytes = self.bytes.saturating_sub(stats.bytes_freed);
        Ok(stats)
    }

    /// Makes every appended image durable: the current file's data, and the directory, so
    /// that files started since (and their entries) survive a crash too. (Full files were
    /// synced when the next one was started.)
    pub(crate) fn sync(&self) -> Result<(), ImageStoreError> {
        self.current_file
            .sync_data()
            .map_err(|source| ImageStoreError::Io {
                path: file_path(&self.dir, self.current),
                source,
            })?;
        super::sync_dir(&self.dir).map_err(|source| ImageStoreError::Io {
            path: self.dir.clone(),
            source,
        })
    }

    /// Every image file with its length in bytes (whole entries), by file number.
    pub(crate) fn file_lengths(&self) -> Vec<(u32, u64)> {
        self.files.iter().map(|(n, e)| (*n, e.bytes)).collect()
    }

    /// The file appends go to (never evicted).
    pub(crate) fn current_file_number(&self) -> u32 {
        self.current
    }

    /// Evicts image file `n` for the local cache: its entries' headers go to its stub (the
    /// index is rebuilt from them at open), then the file is removed. The caller holds the
    /// store's lock (compaction, which removes files, takes it for writing) and has checked
    /// that the bucket holds every byte. False when there is nothing to evict.
    pub(crate) fn evict_file(&self, n: u32) -> Result<bool, ImageStoreError> {
        let Some(extent) = self.files.get(&n).copied() else {
            return Ok(false);
        };
        if n == self.current {
            return Ok(false);
        }
        let path = file_path(&self.dir, n);
        let io = |source| ImageStoreError::Io {
            path: path.clone(),
            source,
        };
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io(e)),
        };
        // The entries' headers in file order: their lengths give the offsets back.
        let mut headers = Vec::with_capacity(extent.entries as usize * HEADER);
        let mut h = [0u8; HEADER];
        let mut offset = 0u64;
        while offset + HEADER as u64 <= extent.bytes {
            f.read_exact_at(&mut h, offset).map_err(io)?;
            headers.extend_from_slice(&h);
            offset += match frame_of(&h) {
                Frame::Image(size) => size as u64,
                Frame::Quarantined => ENTRY_SIZE as u64,
                Frame::QuarantinedRest | Frame::Unknown => break,
            };
        }
        super::cache::evict_file(&path, &headers).map_err(io)?;
        Ok(true)
    }

    /// The directory of the image files.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// LSN of the newest image of `key` at or before `lsn`.
    pub(crate) fn newest_at_or_before(&self, key: &PageKey, lsn: Lsn) -> Option<Lsn> {
        let locs = self.index.get(key)?;
        let n = locs.partition_point(|l| l.lsn <= lsn);
        n.checked_sub(1).map(|i| locs[i].lsn)
    }

    /// Reads the image of `key` taken at exactly `lsn`, checking its CRC.
    #[cfg(test)]
    pub(crate) fn read(&self, key: &PageKey, lsn: Lsn) -> Result<Option<Vec<u8>>, ImageStoreError> {
        let mut page = vec![0u8; BLCKSZ];
        Ok(self.read_into(key, lsn, &mut page)?.then_some(page))
    }

    /// Reads the image of `key` taken at exactly `lsn` into `page` (BLCKSZ bytes), checking
    /// its CRC; false when there is no such image.
    pub(crate) fn read_into(
        &self,
        key: &PageKey,
        lsn: Lsn,
        page: &mut [u8],
    ) -> Result<bool, ImageStoreError> {
        let Some(at) = self.locate(key, lsn) else {
            return Ok(false);
        };
        let mut buf = [0u8; ENTRY_SIZE];
        let entry = &mut buf[..at.len as usize];
        if super::cache::is_active() {
            // Under --cache-size the file may be evicted: read through the cache, keep no
            // file open (see BaseFiles::read_page_into).
            super::cache::read_exact_at(&at.path, entry, at.offset).map_err(at.io_err())?;
        } else {
            match self.file_for_read(at.file) {
                Ok(f) => f.read_exact_at(entry, at.offset).map_err(at.io_err())?,
                // Evicted by a cache this process does not have: the cache's error names it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    super::cache::read_exact_at(&at.path, entry, at.offset).map_err(at.io_err())?
                }
                Err(e) => return Err(at.io_err()(e)),
            }
        }
        at.check_into(entry, page)?;
        Ok(true)
    }

    /// Where the image of `key` taken at exactly `lsn` is stored, to be read with
    /// [`LocatedImage::read_into`] after the store's lock is released (from the bucket when
    /// the local cache evicted its file). Compaction may move the entry and delete the file
    /// meanwhile: a failed read is retried from a fresh `locate`.
    pub(crate) fn locate(&self, key: &PageKey, lsn: Lsn) -> Option<LocatedImage> {
        let loc = self.index.get(key).and_then(|v| {
            let i = v.partition_point(|l| l.lsn < lsn);
            v.get(i).filter(|l| l.lsn == lsn).copied()
        })?;
        Some(LocatedImage {
            key: *key,
            lsn,
            file: loc.file,
            len: loc.len,
            offset: loc.offset,
            path: file_path(&self.dir, loc.file),
        })
    }

    /// Image file `n`, opened for reads once (opening it per read cost more than reading an
    /// entry from the page cache). Compaction forgets a file it deletes.
    fn file_for_read(&self, n: u32) -> io::Result<Arc<File>> {
        let mut open = crate::sync::lock(&self.open_for_read);
        if let Some(f) = open.get(&n) {
            return Ok(Arc::clone(f));
        }
        let f = Arc::new(File::open(file_path(&self.dir, n))?);
        open.insert(n, Arc::clone(&f));
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u32) -> PageKey {
        PageKey {
            rel: RelFileLocator {
                spc_oid: 1663,
                db_oid: 5,
                rel_number: 16384,
            },
            fork: ForkNumber(0),
            block: b,
        }
    }

    /// An image file the local cache evicted is indexed from its stub's headers at open;
    /// its pages are read through the cache (here: none installed, so an error naming the
    /// file, not a missing image); appends never go to an evicted file.
    #[test]
    fn evicted_files_are_indexed_from_their_stubs() {
        let dir = std::env::temp_dir().join(format!("rh_images_evict_{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = ImageStore::open_with(&dir, 4).unwrap();
        for b in 0..6 {
            // Entries of different lengths: packed and, for key 1, stored as it is.
            let page = if b == 1 {
                noise(1)
            } else {
                vec![b as u8; BLCKSZ]
            };
            s.put(&key(b), Lsn(100 + b as u64), &page).unwrap();
        }
        s.sync().unwrap();
        let before: Vec<ImageLocation> = (0..6).map(|b| location(&s, b)).collect();
        assert!(!s.evict_file(1).unwrap(), "the current file stays");
        assert!(s.evict_file(0).unwrap());
        assert!(!file_path(&dir, 0).exists());
        drop(s);
        let mut s = ImageStore::open_with(&dir, 4).unwrap();
        assert_eq!(s.images, 6);
        let after: Vec<ImageLocation> = (0..6).map(|b| location(&s, b)).collect();
        assert_eq!(before, after, "the stub gives every entry's place back");
        assert_eq!(
            s.newest_at_or_before(&key(2), Lsn(u64::MAX)),
            Some(Lsn(102))
        );
        let e = s.read(&key(2), Lsn(102)).unwrap_err().to_string();
        assert!(
            e.contains("evicted") && e.contains("images-000000.dat"),
            "{e}"
        );
        assert_eq!(s.read(&key(5), Lsn(105)).unwrap(), Some(vec![5u8; BLCKSZ]));
        // Evict the newest file too: the next append starts a new file after it.
        s.put(&key(9), Lsn(200), &vec![9u8; BLCKSZ]).unwrap();
        s.sync().unwrap();
        drop(s);
        let s = ImageStore::open_with(&dir, 4).unwrap();
        let current = s.current_file_number();
        let mut s2 = s;
        s2.current = current + 1; // as if a new file had been started
        assert!(s2.evict_file(current).unwrap());
        drop(s2);
        let mut s = ImageStore::open_with(&dir, 4).unwrap();
        assert_eq!(s.current_file_number(), current + 1);
        s.put(&key(10), Lsn(300), &vec![10u8; BLCKSZ]).unwrap();
        assert_eq!(s.images, 8);
        assert_eq!(
            s.read(&key(10), Lsn(300)).unwrap(),
            Some(vec![10u8; BLCKSZ])
        );
        // Compaction removes an evicted file's stub.
        let removed = s.forget_before(Lsn(1000), |_, _| true);
        assert!(removed > 0);
        while s.compact_step(0.5).unwrap_or(None).is_some() {}
        assert!(!super::super::cache::stub_path(&file_path(&dir, 0)).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A page LZ4 cannot shrink (xorshift bytes), different for each `seed`.
    fn noise(seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..BLCKSZ)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Flips one byte of image file `file` at `at`.
    fn flip(dir: &Path, file: u32, at: u64) {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(file_path(dir, file))
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0xFF], at).unwrap();
    }

    fn location(s: &ImageStore, k: u32) -> ImageLocation {
        s.index[&key(k)][0]
    }

    /// The entry as written before packing (`FPWI`, its CRC over key, the LSN's low half and
    /// the page), to show such files are still read.
    fn plain_entry(k: &PageKey, lsn: Lsn, page: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; HEADER];
        e[0..4].copy_from_slice(&MAGIC_PLAIN.to_le_bytes());
        e[4..8].copy_from_slice(&k.rel.spc_oid.to_le_bytes());
        e[8..12].copy_from_slice(&k.rel.db_oid.to_le_bytes());
        e[12..16].copy_from_slice(&k.rel.rel_number.to_le_bytes());
        e[16] = k.fork.0;
        e[20..24].copy_from_slice(&k.block.to_le_bytes());
        e[24..32].copy_from_slice(&lsn.0.to_le_bytes());
        e.extend_from_slice(page);
        let crc = entry_crc(&e);
        e[32..36].copy_from_slice(&crc.to_le_bytes());
        e
    }

    #[test]
    fn pages_are_packed_when_lz4_shrinks_them_and_read_back_equal() {
        let dir = std::env::temp_dir().join(format!("rh_images_pack_{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = ImageStore::open(&dir).unwrap();
        // A page like a table's: a header, free space of zeros, tuples at the end.
        let mut table_page = vec![0u8; BLCKSZ];
        for (i, b) in table_page[6000..].iter_mut().enumerate() {
            *b = (i % 61) as u8;
        }
        s.put(&key(1), Lsn(100), &table_page).unwrap();
        s.put(&key(2), Lsn(200), &noise(2)).unwrap();
        s.put(&key(3), Lsn(300), &vec![0u8; BLCKSZ]).unwrap();
        s.sync().unwrap();
        let table = location(&s, 1);
        let noisy = location(&s, 2);
        assert!((table.len as usize) < ENTRY_SIZE / 3, "{table:?}");
        assert_eq!(noisy.len as usize, ENTRY_SIZE, "stored as it is");
        assert!((location(&s, 3).len as usize) < 100);
        assert_eq!(s.bytes, fs::metadata(file_path(&dir, 0)).unwrap().len());
        drop(s);
        let s = ImageStore::open(&dir).unwrap();
        assert_eq!(s.images, 3);
        assert_eq!(s.read(&key(1), Lsn(100)).unwrap(), Some(table_page));
        assert_eq!(s.read(&key(2), Lsn(200)).unwrap(), Some(noise(2)));
        assert_eq!(s.read(&key(3), Lsn(300)).unwrap(), Some(vec![0u8; BLCKSZ]));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Files written before packing (`FPWI` entries) are read, a damaged one skipped alone
    /// (its length is fixed), and new entries are appended after them.
    #[test]
    fn plain_entries_from_before_packing_are_read_and_skipped_one_by_one() {
        let dir = std::env::temp_dir().join(format!("rh_images_plain_{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut bytes = Vec::new();
        for b in 0..4u32 {
            bytes.extend(plain_entry(
                &key(b),
                Lsn(100 + u64::from(b)),
                &noise(b.into()),
            ));
        }
        fs::write(file_path(&dir, 0), &bytes).unwrap();
        flip(&dir, 0, ENTRY_SIZE as u64 + HEADER as u64 + 7);
        let mut s = ImageStore::open_with(&dir, 8).unwrap();
        assert_eq!(
            s.damaged,
            vec![DamagedEntry {
                path: file_path(&dir, 0),
                offset: ENTRY_SIZE as u64,
                rest_of_file: false,
            }]
        );
        assert_eq!(s.images, 3, "only key 1 is gone");
        assert_eq!(s.read(&key(3), Lsn(103)).unwrap(), Some(noise(3)));
        s.quarantine_damaged().unwrap();
        s.put(&key(5), Lsn(105), &vec![5u8; BLCKSZ]).unwrap();
        s.sync().unwrap();
        drop(s);
        let s = ImageStore::open_with(&dir, 8).unwrap();
        assert!(s.damaged.is_empty());
        assert_eq!(s.images, 4);
        assert_eq!(
            s.current_file_number(),
            0,
            "appended after the plain entries"
        );
        assert_eq!(s.read(&key(0), Lsn(100)).unwrap(), Some(noise(0)));
        assert_eq!(s.read(&key(5), Lsn(105)).unwrap(), Some(vec![5u8; BLCKSZ]));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damage_in_the_middle_is_reported_and_a_damaged_tail_cut_off() {
        let dir = std::env::temp_dir().join(format!("rh_images_dmg_{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = ImageStore::open_with(&dir, 4).unwrap();
        for b in 0..7 {
            s.put(&key(b), Lsn(100 + b as u64), &vec![b as u8; BLCKSZ])
                .unwrap();
        }
        s.sync().unwrap();
        let (k1, k6) = (location(&s, 1), location(&s, 6));
        let file1_len = fs::metadata(file_path(&dir, 1)).unwrap().len();
        drop(s);
        // One flipped byte in key 1's entry in file 0 (followed by good entries), and in the
        // last entry of the newest file (an unsynced append, as after a crash).
        flip(&dir, 0, k1.offset + HEADER as u64 + 3);
        flip(&dir, 1, k6.offset + HEADER as u64 + 3);
        let mut s = ImageStore::open_with(&dir, 4).unwrap();
        assert_eq!(
            s.damaged,
            vec![DamagedEntry {
                path: file_path(&dir, 0),
                offset: k1.offset,
                rest_of_file: true,
            }]
        );
        assert_eq!(s.images, 3, "keys 1-3 (the rest of file 0) and 6 are gone");
        assert_eq!(s.newest_at_or_before(&key(1), Lsn(u64::MAX)), None);
        assert_eq!(s.read(&key(4), Lsn(104)).unwrap(), Some(vec![4u8; BLCKSZ]));
        assert_eq!(
            fs::metadata(file_path(&dir, 1)).unwrap().len(),
            file1_len - u64::from(k6.len),
            "the damaged tail is cut off"
        );
        // Quarantined, the entry is no longer reported.
        s.quarantine_damaged().unwrap();
        drop(s);
        let s = ImageStore::open_with(&dir, 4).unwrap();
        assert!(s.damaged.is_empty());
        assert_eq!(s.images, 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A damaged length in the newest file, with intact entries after it, is damage, not a
    /// torn tail: nothing is cut; its quarantine starts a new file, so later appends are
    /// found at the next open.
    #[test]
    fn a_damaged_length_in_the_newest_file_is_not_cut_off_as_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("rh_images_len_{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = ImageStore::open(&dir).unwrap();
        for b in 0..4 {
            s.put(&key(b), Lsn(100 + b as u64), &vec![b as u8; BLCKSZ])
                .unwrap();
        }
        s.sync().unwrap();
        let k1 = location(&s, 1);
        drop(s);
        let len = fs::metadata(file_path(&dir, 0)).unwrap().len();
        flip(&dir, 0, k1.offset + 18); // the stored length
        let mut s = ImageStore::open(&dir).unwrap();
        assert_eq!(fs::metadata(file_path(&dir, 0)).unwrap().len(), len);
        assert_eq!(s.images, 1);
        assert_eq!(s.damaged.len(), 1);
        assert!(s.damaged[0].rest_of_file);
        assert!(s.damaged[0].to_string().contains("rest of the file"));
        s.quarantine_damaged().unwrap();
        assert_eq!(s.current_file_number(), 1);
        s.put(&key(9), Lsn(900), &vec![9u8; BLCKSZ]).unwrap();
        s.sync().unwrap();
        drop(s);
        let s = ImageStore::open(&dir).unwrap();
        assert!(s.damaged.is_empty());
        assert_eq!(s.images, 2);
        assert_eq!(s.read(&key(9), Lsn(900)).unwrap(), Some(vec![9u8; BLCKSZ]));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn put_read_and_recover_after_torn_write() {
        let dir = std::env::temp_dir().join(format!("rh_images_{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = ImageStore::open(&dir).unwrap();
        let page = |v: u8| vec![v; BLCKSZ];
        s.put(&key(1), Lsn(100), &page(1)).unwrap();
        s.put(&key(1), Lsn(300), &noise(3)).unwrap();
        s.put(&key(2), Lsn(200), &page(2)).unwrap();
        s.sync().unwrap();
        assert_eq!(s.newest_at_or_before(&key(1), Lsn(299)), Some(Lsn(100)));
        assert_eq!(s.newest_at_or_before(&key(1), Lsn(300)), Some(Lsn(300)));
        assert_eq!(s.newest_at_or_before(&key(1), Lsn(99)), None);
        assert_eq!(s.read(&key(1), Lsn(300)).unwrap(), Some(noise(3)));
        let len = s.bytes;
        drop(s);
        // Torn appends: half an entry at the end of the file, or a header alone.
        for torn in [5000usize, HEADER, 10] {
            let mut tail = vec![0xAB; torn];
            if torn >= HEADER {
                let mut e = Vec::new();
                pack_entry(&key(7), Lsn(700), &noise(7), &mut e);
                tail.copy_from_slice(&e[..torn]);
            }
            let f = OpenOptions::new()
                .write(true)
                .open(file_path(&dir, 0))
                .unwrap();
            f.write_all_at(&tail, len).unwrap();
            let s = ImageStore::open(&dir).unwrap();
            assert_eq!(s.images, 3);
            assert!(s.damaged.is_empty());
            assert_eq!(fs::metadata(file_path(&dir, 0)).unwrap().len(), len);
        }
        let mut s = ImageStore::open(&dir).unwrap();
        assert_eq!(s.read(&key(2), Lsn(200)).unwrap(), Some(page(2)));
        s.put(&key(2), Lsn(400), &page(4)).unwrap();
        assert_eq!(s.read(&key(2), Lsn(400)).unwrap(), Some(page(4)));
        // A flipped byte is caught by the CRC; the entries after it lose their frame.
        drop(s);
        flip(&dir, 0, (HEADER + 10) as u64);
        let s = ImageStore::open(&dir).unwrap();
        assert_eq!(s.images, 0);
        assert_eq!(s.damaged.len(), 1);
        assert_eq!(s.newest_at_or_before(&key(1), Lsn(200)), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn retention_forgets_old_images_and_compaction_gives_the_space_back() {
        let dir = std::env::temp_dir().join(format!("rh_images_ret_{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // Files of 4 entries.
        let mut s = ImageStore::open_with(&dir, 4).unwrap();
        let page = |v: u8| vec![v; BLCKSZ];
        // File 0: key 1 at 10, 20, 30; key 2 at 15.  File 1: key 1 at 40; key 3 at 5, 50;
        // key 2 at 60.  File 2: key 4 at 70.
        for (k, l) in [
            (1, 10),
            (1, 20),
            (1, 30),
            (2, 15),
            (1, 40),
            (3, 5),
            (3, 50),
            (2, 60),
        ] {
            s.put(&key(k), Lsn(l), &page(l as u8)).unwrap();
        }
        s.put(&key(4), Lsn(70), &page(70)).unwrap();
        s.sync().unwrap();
        let on_disk = |dir: &Path| -> u64 {
            (0..3)
                .filter_map(|n| fs::metadata(file_path(dir, n)).ok())
                .map(|m| m.len())
                .sum()
        };
        assert_eq!((s.images, s.bytes), (9, on_disk(&dir)));
        // Horizon 45; key 3 was dropped at 8 (after its image at 5).
        let forgotten = s.forget_before(Lsn(45), |k, l| *k == key(3) && l < Lsn(8));
        // Key 1: 10, 20, 30 go (40 is the newest before 45); key 3: 5 goes.
        assert_eq!(forgotten, 4);
        assert_eq!(s.newest_at_or_before(&key(1), Lsn(44)), Some(Lsn(40)));
        assert_eq!(s.newest_at_or_before(&key(1), Lsn(35)), None);
        assert_eq!(s.newest_at_or_before(&key(2), Lsn(45)), Some(Lsn(15)));
        assert_eq!(s.newest_at_or_before(&key(3), Lsn(45)), None);
        // File 0 keeps 1 of 4 entries (key 2 at 15): copied to the current file, deleted.
        let c = s.compact_step(0.5).unwrap().unwrap();
        assert_eq!((c.files_removed, c.entries_moved), (1, 1));
        assert!(!file_path(&dir, 0).exists());
        // File 1 keeps 3 of 4: left alone.
        assert_eq!(s.compact_step(0.5).unwrap(), None);
        assert_eq!(s.read(&key(2), Lsn(15)).unwrap(), Some(page(15)));
        assert_eq!(s.bytes, on_disk(&dir));
        assert_eq!(c.bytes_freed, 4 * u64::from(location(&s, 4).len));
        drop(s);
        // After a restart the same images are found.
        // (Key 3's image at 5 was only forgotten in memory: file 1 still has it, and the next
        // retention pass forgets it again.)
        let s = ImageStore::open_with(&dir, 4).unwrap();
        assert_eq!(s.images, 6);
        assert_eq!(s.read(&key(2), Lsn(15)).unwrap(), Some(page(15)));
        assert_eq!(s.read(&key(1), Lsn(40)).unwrap(), Some(page(40)));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compaction_read_outside_the_lock_copies_what_is_still_live_when_it_finishes() {
        let dir = std::env::temp_dir().join(format!("rh_images_plan_{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = ImageStore::open_with(&dir, 4).unwrap();
        let page = |v: u8| vec![v; BLCKSZ];
        // File 0: key 1 at 10, key 2 at 20, key 3 at 30, key 4 at 40. File 1: key 5 at 50.
        for (k, l) in [(1, 10), (2, 20), (3, 30), (4, 40), (5, 50)] {
            s.put(&key(k), Lsn(l), &page(l as u8)).unwrap();
        }
        s.sync().unwrap();
        // Keys 1 and 2 get newer images (their old ones go at horizon 75).
        s.put(&key(1), Lsn(60), &page(60)).unwrap();
        s.put(&key(2), Lsn(70), &page(70)).unwrap();
        assert_eq!(s.forget_before(Lsn(75), |_, _| false), 2);
        // File 0 keeps keys 3 and 4: planned with both, read outside the lock.
        let plan = s.plan_compaction(0.6).expect("file 0 is below the ratio");
        assert_eq!(plan.file, 0);
        assert_eq!(plan.entries.len(), 2);
        let mut live = plan.read_live().unwrap();
        assert!(
            live.is_empty(),
            "a local file's entries are copied under the lock"
        );
        // As read from the bucket had the cache evicted the file:
        for (_, loc) in &plan.entries {
            let mut buf = vec![0u8; loc.len as usize];
            s.file_for_read(0)
                .unwrap()
                .read_exact_at(&mut buf, loc.offset)
                .unwrap();
            live.insert(loc.offset, buf);
        }
        // Meanwhile key 3 gets a newer image and its old one is forgotten; and the bytes of
        // key 4's entry are missing (finish reads them itself).
        s.put(&key(3), Lsn(80), &page(80)).unwrap();
        assert_eq!(s.forget_before(Lsn(85), |_, _| false), 1);
        let key4 = s.index[&key(4)][0].offset;
        live.remove(&key4);
        let c = s.finish_compaction(plan, live).unwrap();
        assert_eq!(
            (c.files_removed, c.entries_moved),
            (1, 1),
            "only key 4 is still live"
        );
        assert!(!file_path(&dir, 0).exists());
        assert_eq!(s.read(&key(4), Lsn(40)).unwrap(), Some(page(40)));
        assert_eq!(s.read(&key(3), Lsn(80)).unwrap(), Some(page(80)));
        drop(s);
        let s = ImageStore::open_with(&dir, 4).unwrap();
        assert_eq!(s.read(&key(4), Lsn(40)).unwrap(), Some(page(40)));
        fs::remove_dir_all(&dir).unwrap();
    }
}
