//! Base page images: the relation files of the bootstrap BASE_BACKUP, kept with PostgreSQL's
//! own naming (`REL`, `REL_fsm`, `REL_vm`, `REL_init`, `.N` for each 1 GB segment) under
//! `DATA_DIR/base/SPC/DB/`. A page of block b lives in segment b / RELSEG_SIZE.

use crate::pgdata::relpath::{RELSEG_SIZE, RelationFileName};
use crate::sync::lock;
use crate::wal::block::{PageKey, RelFileLocator};
use crate::wal::page::BLCKSZ;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The base file store; cheap to clone (shares the list of directories to fsync and the
/// open files).
#[derive(Clone)]
pub(crate) struct BaseFiles {
    root: PathBuf,
    dirs: Arc<Mutex<BTreeSet<PathBuf>>>,
    /// Relation segment files kept open for reads: opening one per GetPage (a path lookup of
    /// four components, a file object, a close) cost more than the `pread` of a page in the
    /// page cache. Only files that exist are kept (one written later is found then); at
    /// most [`OPEN_BASE_FILES`], and the whole set is dropped when it is full.
    open: Arc<Mutex<HashMap<SegmentId, Arc<File>>>>,
}

/// One relation segment file of the backup: tablespace, database, relfilenode, fork, segment.
type SegmentId = (u32, u32, u32, u8, u32);

/// Open base files kept at most (a fraction of the usual 1024 descriptors per process).
const OPEN_BASE_FILES: usize = 256;

impl BaseFiles {
    pub(crate) fn new(root: PathBuf) -> BaseFiles {
        BaseFiles {
            root,
            dirs: Arc::new(Mutex::new(BTreeSet::new())),
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn relation_path(&self, spc: u32, db: u32, file: &RelationFileName) -> PathBuf {
        self.root
            .join(spc.to_string())
            .join(db.to_string())
            .join(file.file_name())
    }

    /// Where the page of `key` lives, and its byte offset in that file.
    pub(crate) fn page_location(&self, key: &PageKey) -> (PathBuf, u64) {
        let file = RelationFileName {
            rel_number: key.rel.rel_number,
            fork: key.fork,
            segment: key.block / RELSEG_SIZE,
        };
        let offset = u64::from(key.block % RELSEG_SIZE) * BLCKSZ as u64;
        (
            self.relation_path(key.rel.spc_oid, key.rel.db_oid, &file),
            offset,
        )
    }

    /// Every page of every relation file the backup holds.
    pub(crate) fn page_keys(&self) -> Vec<PageKey> {
        let mut keys = Vec::new();
        let numbered = |dir: &Path| -> Vec<(u32, PathBuf)> {
            std::fs::read_dir(dir)
                .map(|it| {
                    it.flatten()
                        .filter_map(|e| {
                            let n = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                            Some((n, e.path()))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        for (spc_oid, spc_dir) in numbered(&self.root) {
            for (db_oid, db_dir) in numbered(&spc_dir) {
                let Ok(files) = std::fs::read_dir(&db_dir) else {
                    continue;
                };
                for f in files.flatten() {
                    let file_name = f.file_name().to_string_lossy().into_owned();
                    // A file the local cache evicted counts by the length its stub keeps.
                    let (name, len) = match file_name.strip_suffix(super::cache::EVICTED_SUFFIX) {
                        Some(evicted) => {
                            let Some(name) = RelationFileName::parse(evicted) else {
                                continue;
                            };
                            let Some(len) = super::cache::stub_length(&f.path()) else {
                                continue;
                            };
                            (name, len)
                        }
                        None => {
                            let Some(name) = RelationFileName::parse(&file_name) else {
                                continue;
                            };
                            let Ok(md) = f.metadata() else { continue };
                            (name, md.len())
                        }
                    };
                    let rel = RelFileLocator {
                        spc_oid,
                        db_oid,
                        rel_number: name.rel_number,
                    };
                    for b in 0..(len / BLCKSZ as u64) as u32 {
                        keys.push(PageKey {
                            rel,
                            fork: name.fork,
                            block: name.segment * RELSEG_SIZE + b,
                        });
                    }
                }
            }
        }
        keys
    }

    /// The base image of a page, or None if the backup did not have it.
    pub(crate) fn read_page(&self, key: &PageKey) -> io::Result<Option<Vec<u8>>> {
        let mut page = vec![0u8; BLCKSZ];
        Ok(self.read_page_into(key, &mut page)?.then_some(page))
    }

    /// Reads the base image of a page into `page` (BLCKSZ bytes); false if the backup did
    /// not have it.
    pub(crate) fn read_page_into(&self, key: &PageKey, page: &mut [u8]) -> io::Result<bool> {
        if super::cache::is_active() {
            return self.read_page_through_cache(key, page);
        }
        let Some(file) = self.segment_file(key)? else {
            // No file: not in the backup, or evicted by a cache this process does not have
            // (an error naming the file, never "no such page").
            return self.read_page_through_cache(key, page);
        };
        let offset = u64::from(key.block % RELSEG_SIZE) * BLCKSZ as u64;
        match file.read_exact_at(page, offset) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// With --cache-size a file may be evicted at any time: every read goes through the cache
    /// (from the file while it is there, else from the bucket), and no file is kept open,
    /// which would keep an evicted file's space in use. A page past an evicted file's length
    /// is UnexpectedEof, as in a short local one; an evicted file without a cache installed
    /// is an error naming it.
    fn read_page_through_cache(&self, key: &PageKey, page: &mut [u8]) -> io::Result<bool> {
        let (path, offset) = self.page_location(key);
        match super::cache::read_exact_at(&path, page, offset) {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts reading the base image of a page from disk (see [`super::prefetch`]).
    pub(crate) fn prefetch_page(&self, key: &PageKey) {
        if super::cache::is_active() {
            return; // files are not kept open under the cache (see read_page_into)
        }
        if let Ok(Some(file)) = self.segment_file(key) {
            let offset = u64::from(key.block % RELSEG_SIZE) * BLCKSZ as u64;
            super::prefetch(&file, offset, BLCKSZ as u64);
        }
    }

    /// The open segment file holding `key`'s page (None: the backup has no such file).
    fn segment_file(&self, key: &PageKey) -> io::Result<Option<Arc<File>>> {
        let id: SegmentId = (
            key.rel.spc_oid,
            key.rel.db_oid,
            key.rel.rel_number,
            key.fork.0,
            key.block / RELSEG_SIZE,
        );
        if let Some(f) = lock(&self.open).get(&id) {
            return Ok(Some(Arc::clone(f)));
        }
        let (path, _) = self.page_location(key);
        let file = match File::open(&path) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut open = lock(&self.open);
        if open.len() >= OPEN_BASE_FILES {
            open.clear();
        }
        open.insert(id, Arc::clone(&file));
        Ok(Some(file))
    }

    /// Copies `src` to `dest` and fsyncs the file; the directory is synced by `sync_all`.
    pub(crate) fn write_file(&self, dest: &Path, src: &mut impl Read) -> io::Result<u64> {
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        super::create_private_dir_all(&dir)?;
        let mut f = super::private_file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(dest)?;
        let n = io::copy(src, &mut f)?;
        f.flush()?;
        f.sync_all()?;
        {
            let mut dirs = lock(&self.dirs);
            let mut d = dir.as_path();
            // The file's directory and every parent up to the root.
            while d.starts_with(&self.root) {
                dirs.insert(d.to_path_buf());
                match d.parent() {
                    Some(p) => d = p,
                    None => break,
                }
            }
        }
        Ok(n)
    }

    /// fsync every directory a file was written into.
    pub(crate) fn sync_all(&self) -> io::Result<()> {
        let dirs = lock(&self.dirs).clone();
        for d in dirs {
            super::sync_dir(&d)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_file_names() {
        for name in ["16384", "16384_fsm", "16384_vm.3", "1259_init", "2.1"] {
            assert_eq!(RelationFileName::parse(name).unwrap().file_name(), name);
        }
        for bad in [
            "pg_filenode.map",
            "PG_VERSION",
            "16384_xx",
            "16384.",
            "_vm",
            "12a",
            "16384_main",
        ] {
            assert!(RelationFileName::parse(bad).is_none(), "{bad}");
        }
    }
}
