//! Generated page images: append-only files of fixed-size entries, each an 8 KB page at an
//! LSN with a CRC of our own (crc32fast, over key, LSN and page), plus an in-memory index
//! rebuilt by scanning the files at start-up. A torn tail after `kill -9` fails its CRC or
//! its length and is cut off; images are a cache of what the WAL already determines, so a
//! lost image is simply generated again.
//!
//! Entry layout (little endian): magic u32, spc u32, db u32, rel u32, fork u8, pad [u8;3],
//! block u32, lsn u64, crc u32, page [u8; 8192].

use crate::wal::block::{ForkNumber, PageKey, RelFileLocator};
use crate::wal::page::{BLCKSZ, Lsn};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0x4650_5749; // "FPWI"
const HEADER: usize = 36;
pub const ENTRY_SIZE: usize = HEADER + BLCKSZ;
/// Entries per file before a new one is started (~512 MB).
const ENTRIES_PER_FILE: u64 = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
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
    offset: u64,
}

pub struct ImageStore {
    dir: PathBuf,
    /// Per page, images sorted by LSN.
    index: HashMap<PageKey, Vec<ImageLocation>>,
    current: u32,
    current_file: File,
    current_entries: u64,
    pub images: u64,
    pub bytes: u64,
}

fn file_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("images-{n:06}.dat"))
}

fn entry_crc(header: &[u8], page: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[4..28]); // key and LSN
    h.update(page);
    h.finalize()
}

fn encode_header(key: &PageKey, lsn: Lsn, page: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&key.rel.spc_oid.to_le_bytes());
    h[8..12].copy_from_slice(&key.rel.db_oid.to_le_bytes());
    h[12..16].copy_from_slice(&key.rel.rel_number.to_le_bytes());
    h[16] = key.fork.0;
    h[20..24].copy_from_slice(&key.block.to_le_bytes());
    h[24..32].copy_from_slice(&lsn.0.to_le_bytes());
    let crc = entry_crc(&h, page);
    h[32..36].copy_from_slice(&crc.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn decode_header(h: &[u8]) -> (PageKey, Lsn, u32) {
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
    (key, lsn, u32_at(h, 32))
}

impl ImageStore {
    /// Opens the store, scanning every file; a torn or corrupt tail is truncated.
    pub fn open(dir: &Path) -> Result<ImageStore, ImageStoreError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageStoreError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut numbers: Vec<u32> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("images-")?
                    .strip_suffix(".dat")?
                    .parse()
                    .ok()
            })
            .collect();
        numbers.sort_unstable();
        let mut index: HashMap<PageKey, Vec<ImageLocation>> = HashMap::new();
        let (mut images, mut last_entries) = (0u64, 0u64);
        let mut buf = vec![0u8; ENTRY_SIZE];
        for &n in &numbers {
            let path = file_path(dir, n);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let len = f.metadata().map_err(io_err(&path))?.len();
            // Whole entries are checked one by one (a bad one is skipped: it is only a cache);
            // a partial entry at the end is a torn append and is cut off.
            let whole = len - len % ENTRY_SIZE as u64;
            let mut offset = 0u64;
            while offset < whole {
                f.read_exact_at(&mut buf, offset).map_err(io_err(&path))?;
                let (key, lsn, crc) = decode_header(&buf);
                if u32_at(&buf, 0) == MAGIC && entry_crc(&buf[..HEADER], &buf[HEADER..]) == crc {
                    index.entry(key).or_default().push(ImageLocation {
                        lsn,
                        file: n,
                        offset,
                    });
                    images += 1;
                } else {
                    log::warn!(
                        "image store: skipping a damaged entry at offset {offset} of {}",
                        path.display()
                    );
                }
                offset += ENTRY_SIZE as u64;
            }
            if whole != len {
                log::warn!(
                    "image store: cutting {} torn bytes off {}",
                    len - whole,
                    path.display()
                );
                f.set_len(whole).map_err(io_err(&path))?;
            }
            last_entries = whole / ENTRY_SIZE as u64;
        }
        for v in index.values_mut() {
            v.sort_by_key(|l| l.lsn);
        }
        let current = numbers.last().copied().unwrap_or(0);
        let path = file_path(dir, current);
        let current_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(ImageStore {
            dir: dir.to_path_buf(),
            index,
            current,
            current_file,
            current_entries: if numbers.is_empty() { 0 } else { last_entries },
            images,
            bytes: images * ENTRY_SIZE as u64,
        })
    }

    /// Appends an image of `key` as of `lsn`. Durability is batched: see `sync`.
    pub fn put(&mut self, key: &PageKey, lsn: Lsn, page: &[u8]) -> Result<(), ImageStoreError> {
        if self.current_entries >= ENTRIES_PER_FILE {
            self.sync()?;
            self.current += 1;
            let path = file_path(&self.dir, self.current);
            self.current_file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|source| ImageStoreError::Io { path, source })?;
            self.current_entries = 0;
        }
        let header = encode_header(key, lsn, page);
        let offset = self.current_entries * ENTRY_SIZE as u64;
        let path = || file_path(&self.dir, self.current);
        self.current_file
            .write_all_at(&header, offset)
            .map_err(|source| ImageStoreError::Io {
                path: path(),
                source,
            })?;
        self.current_file
            .write_all_at(page, offset + HEADER as u64)
            .map_err(|source| ImageStoreError::Io {
                path: path(),
                source,
            })?;
        self.current_entries += 1;
        let locs = self.index.entry(*key).or_default();
        let at = locs.partition_point(|l| l.lsn <= lsn);
        locs.insert(
            at,
            ImageLocation {
                lsn,
                file: self.current,
                offset,
            },
        );
        self.images += 1;
        self.bytes += ENTRY_SIZE as u64;
        Ok(())
    }

    pub fn sync(&self) -> Result<(), ImageStoreError> {
        self.current_file
            .sync_data()
            .map_err(|source| ImageStoreError::Io {
                path: file_path(&self.dir, self.current),
                source,
            })
    }

    /// LSN of the newest image of `key` at or before `lsn`.
    pub fn newest_at_or_before(&self, key: &PageKey, lsn: Lsn) -> Option<Lsn> {
        let locs = self.index.get(key)?;
        let n = locs.partition_point(|l| l.lsn <= lsn);
        n.checked_sub(1).map(|i| locs[i].lsn)
    }

    /// Reads the image of `key` taken at exactly `lsn`, checking its CRC.
    pub fn read(&self, key: &PageKey, lsn: Lsn) -> Result<Option<Vec<u8>>, ImageStoreError> {
        let Some(loc) = self
            .index
            .get(key)
            .and_then(|v| v.iter().find(|l| l.lsn == lsn))
            .copied()
        else {
            return Ok(None);
        };
        let path = file_path(&self.dir, loc.file);
        let f = File::open(&path).map_err(|source| ImageStoreError::Io {
            path: path.clone(),
            source,
        })?;
        let mut buf = vec![0u8; ENTRY_SIZE];
        f.read_exact_at(&mut buf, loc.offset)
            .map_err(|source| ImageStoreError::Io {
                path: path.clone(),
                source,
            })?;
        let (k, l, crc) = decode_header(&buf);
        if k != *key || l != lsn || entry_crc(&buf[..HEADER], &buf[HEADER..]) != crc {
            return Err(ImageStoreError::Corrupt {
                key: *key,
                lsn,
                path,
            });
        }
        buf.drain(..HEADER);
        Ok(Some(buf))
    }

    pub fn pages(&self) -> usize {
        self.index.len()
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

    #[test]
    fn put_read_and_recover_after_torn_write() {
        let dir = std::env::temp_dir().join(format!("rh_images_{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut s = ImageStore::open(&dir).unwrap();
        let page = |v: u8| vec![v; BLCKSZ];
        s.put(&key(1), Lsn(100), &page(1)).unwrap();
        s.put(&key(1), Lsn(300), &page(3)).unwrap();
        s.put(&key(2), Lsn(200), &page(2)).unwrap();
        s.sync().unwrap();
        assert_eq!(s.newest_at_or_before(&key(1), Lsn(299)), Some(Lsn(100)));
        assert_eq!(s.newest_at_or_before(&key(1), Lsn(300)), Some(Lsn(300)));
        assert_eq!(s.newest_at_or_before(&key(1), Lsn(99)), None);
        assert_eq!(s.read(&key(1), Lsn(300)).unwrap(), Some(page(3)));
        drop(s);
        // A torn append: half an entry at the end of the file.
        let f = OpenOptions::new()
            .append(true)
            .open(file_path(&dir, 0))
            .unwrap();
        f.write_all_at(&[0xAB; 5000], 3 * ENTRY_SIZE as u64)
            .unwrap();
        let mut s = ImageStore::open(&dir).unwrap();
        assert_eq!(s.images, 3);
        assert_eq!(
            fs::metadata(file_path(&dir, 0)).unwrap().len(),
            3 * ENTRY_SIZE as u64
        );
        assert_eq!(s.read(&key(2), Lsn(200)).unwrap(), Some(page(2)));
        s.put(&key(2), Lsn(400), &page(4)).unwrap();
        assert_eq!(s.read(&key(2), Lsn(400)).unwrap(), Some(page(4)));
        // A flipped byte is caught by the CRC.
        drop(s);
        let f = OpenOptions::new()
            .write(true)
            .open(file_path(&dir, 0))
            .unwrap();
        f.write_all_at(&[0xFF], (HEADER + 10) as u64).unwrap();
        let s = ImageStore::open(&dir).unwrap();
        assert_eq!(s.images, 3, "the damaged entry is skipped, the others stay");
        assert_eq!(s.newest_at_or_before(&key(1), Lsn(200)), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
