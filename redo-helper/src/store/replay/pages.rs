//! The pages of a bulk replay: a page table filled from the base backup's files on first
//! use, and what the WAL said about which pages exist (drops, truncations, database
//! copies).

use super::{FastMap, ReplayError};
use crate::pgdata::relpath::{RELSEG_SIZE, RelationFileName};
use crate::redo::page::Page;
use crate::redo::pagetable::{PageTable, key_hash};
use crate::redo::smgr::{DatabaseDir, RelationChange};
use crate::store::base::BaseFiles;
use crate::wal::block::{ForkNumber, PageKey, RelFileLocator};
use crate::wal::page::BLCKSZ;
use std::collections::{HashMap, HashSet};
use std::ptr::NonNull;

/// The replayed pages plus what is known about which pages exist.
pub(crate) struct PageSet {
    pub(crate) base: BaseFiles,
    /// Open base files (None: the file does not exist), so loading a page is one pread.
    files: BaseFileCache,
    pub(crate) pages: PageTable,
    /// Relations dropped in the WAL: their base files are gone.
    dropped: HashSet<RelFileLocator>,
    /// Forks truncated in the WAL: base pages at or past the limit are gone.
    truncated: HashMap<(RelFileLocator, ForkNumber), u32>,
    dropped_dbs: HashSet<(u32, u32)>,
    /// Pages loaded from the base backup, and the time it took when timed.
    pub(crate) loads: BaseLoads,
}

/// Base pages a replay thread loaded (`verify --bench` times them: a record's timing
/// sample leaves its page loads out, which are the first touch's cost, not its type's).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct BaseLoads {
    pub(crate) timed: bool,
    pub(crate) pages: u64,
    pub(crate) time: std::time::Duration,
}

/// Base files by (relation, fork, segment), mapped read-only on first use.
///
/// A page loaded from the base backup is copied out of the segment's shared read-only
/// mapping (the page cache's own pages: a read fault maps up to 16 neighbouring pages of
/// the file at once, and nothing is allocated) into a buffer of the page table's arena,
/// whose memory was faulted in a chunk at a time ahead of use
/// ([`crate::redo::pagetable::PageArena`]). Measured against the alternatives on a virtual
/// machine with shadow paging (every fault traps into the hypervisor): a copy-on-write
/// private mapping paid two 4 KB copy-on-write faults per page, and a `pread` per page a
/// system call (~2 us with its copy). The mapping is never written, so it never needs the
/// TLB flush a copy-on-write would send to the other replay threads. The base files never
/// change after the bootstrap, which the mapping relies on (a file truncated under it
/// would fault on access).
#[derive(Default)]
struct BaseFileCache {
    open: FastMap<(RelFileLocator, ForkNumber, u32), BaseSegment>,
}

enum BaseSegment {
    Missing,
    /// The segment's read-only mapping and its length (unmapped with the cache).
    Mapped(NonNull<u8>, usize),
    /// Could not be mapped (an empty file, a file system without mmap): read with pread.
    Unmapped(std::fs::File),
}

// SAFETY: a read-only mapping that belongs to this cache alone (unmapped on its drop); the
// cache moves between threads only with its page set, so no two threads use it at once.
unsafe impl Send for BaseSegment {}

impl Drop for BaseFileCache {
    fn drop(&mut self) {
        for (_, seg) in self.open.drain() {
            if let BaseSegment::Mapped(p, len) = seg {
                // SAFETY: the mapping made in `load`, of this length; the pages were copied
                // out of it, nothing points into it.
                unsafe { libc::munmap(p.as_ptr() as *mut libc::c_void, len) };
            }
        }
    }
}

impl BaseFileCache {
    /// The base image of `key`, copied into a buffer of `pages`. None when the backup does
    /// not have the page.
    fn load(
        &mut self,
        base: &BaseFiles,
        key: &PageKey,
        pages: &mut PageTable,
    ) -> Result<Option<NonNull<Page>>, ReplayError> {
        use std::os::unix::fs::FileExt;
        use std::os::unix::io::AsRawFd;
        let seg = key.block / RELSEG_SIZE;
        let segment = match self.open.entry((key.rel, key.fork, seg)) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let (path, _) = base.page_location(key);
                let file = match std::fs::File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        v.insert(BaseSegment::Missing);
                        return Ok(None);
                    }
                    Err(source) => return Err(ReplayError::Io { path, source }),
                };
                let len = file
                    .metadata()
                    .map_err(|source| ReplayError::Io {
                        path: path.clone(),
                        source,
                    })?
                    .len() as usize;
                let p = if len == 0 {
                    libc::MAP_FAILED
                } else {
                    // SAFETY: a shared read-only mapping of a file opened here, of its
                    // length; mmap touches no memory of ours and its result is checked
                    // below.
                    unsafe {
                        libc::mmap(
                            std::ptr::null_mut(),
                            len,
                            libc::PROT_READ,
                            libc::MAP_SHARED,
                            file.as_raw_fd(),
                            0,
                        )
                    }
                };
                match NonNull::new(p as *mut u8) {
                    Some(p) if p.as_ptr() as *mut libc::c_void != libc::MAP_FAILED => {
                        v.insert(BaseSegment::Mapped(p, len))
                    }
                    _ => v.insert(BaseSegment::Unmapped(file)),
                }
            }
        };
        let offset = (key.block % RELSEG_SIZE) as usize * BLCKSZ;
        match segment {
            BaseSegment::Missing => Ok(None),
            BaseSegment::Mapped(p, len) => {
                if offset + BLCKSZ > *len {
                    return Ok(None);
                }
                let (buf, _) = pages.new_page();
                // SAFETY: the source lies within the mapping (checked above), which is
                // readable and not written by anyone while the base files exist; the
                // destination is a buffer of the table not given to any slot yet.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        p.as_ptr().add(offset),
                        buf.as_ptr() as *mut u8,
                        BLCKSZ,
                    )
                };
                Ok(Some(buf))
            }
            BaseSegment::Unmapped(f) => {
                let (mut buf, _) = pages.new_page();
                // SAFETY: a buffer of the table not given to any slot yet.
                let page = unsafe { buf.as_mut() };
                match f.read_exact_at(&mut page[..], offset as u64) {
                    Ok(()) => Ok(Some(buf)),
                    Err(e) => {
                        pages.release(buf);
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            Ok(None)
                        } else {
                            Err(ReplayError::Io {
                                path: base.page_location(key).0,
                                source: e,
                            })
                        }
                    }
                }
            }
        }
    }
}

impl PageSet {
    pub(crate) fn new(base: BaseFiles) -> PageSet {
        PageSet {
            base,
            files: BaseFileCache::default(),
            pages: PageTable::new(),
            dropped: HashSet::new(),
            truncated: HashMap::new(),
            dropped_dbs: HashSet::new(),
            loads: BaseLoads::default(),
        }
    }

    /// Pages unreadable at the end of the replay.
    pub(crate) fn unreadable_pages(&self) -> u64 {
        self.pages
            .slots()
            .iter()
            .filter(|p| p.unreadable.is_some())
            .count() as u64
    }

    pub(crate) fn base_gone(&self, key: &PageKey) -> bool {
        base_gone(&self.dropped, &self.dropped_dbs, &self.truncated, key)
    }

    /// The page's slot for a record that replaces the whole page (WILL_INIT, or an image
    /// to restore), without reading the base backup's page: its bytes would all be
    /// overwritten. PostgreSQL does not read such a page either
    /// (`XLogReadBufferForRedoExtended` gets it with `RBM_ZERO_AND_LOCK`). A page new to
    /// the table starts zeroed; its redo then initialises or restores all of it.
    pub(super) fn get_or_zero(&mut self, key: &PageKey, hash: u64) -> u32 {
        if let Some(slot) = self.pages.find(key, hash) {
            return slot;
        }
        let (mut buf, zeroed) = self.pages.new_page();
        if !zeroed {
            // SAFETY: a buffer of the table not given to any slot yet.
            unsafe { buf.as_mut() }.fill(0);
        }
        self.pages.insert(*key, hash, buf)
    }

    /// The page's slot, loading the page from the base backup on first use. None when
    /// the page does not exist (PostgreSQL's redo then skips the block: BLK_NOTFOUND).
    pub(super) fn get_or_load(
        &mut self,
        key: &PageKey,
        hash: u64,
        create: bool,
    ) -> Result<Option<u32>, ReplayError> {
        if let Some(slot) = self.pages.find(key, hash) {
            return Ok(Some(slot));
        }
        if !self.base_gone(key) {
            let t = self.loads.timed.then(std::time::Instant::now);
            if let Some(page) = self.files.load(&self.base, key, &mut self.pages)? {
                // Only pages found: `pages` and `time` then give the cost per page loaded
                // (a miss stays in its record's time).
                if let Some(t) = t {
                    self.loads.time += t.elapsed();
                }
                self.loads.pages += 1;
                return Ok(Some(self.pages.insert(*key, hash, page)));
            }
        }
        if !create {
            return Ok(None);
        }
        Ok(Some(self.get_or_zero(key, hash)))
    }

    /// `XLOG_DBASE_CREATE_FILE_COPY` at `lsn`: the directory `dst` is removed, then every
    /// page of `src` as of now (this replay's page, or the base backup's) that `owns`
    /// accepts is copied to the same relfilenode, fork and block in `dst` (`dbase_redo`
    /// copies the template's directory with `copydir` after flushing its buffers). The
    /// caller owns both the template's page and its copy (see `DatabaseAliases`). Returns
    /// the pages copied.
    pub(super) fn copy_database(
        &mut self,
        lsn: crate::wal::page::Lsn,
        dst: DatabaseDir,
        src: DatabaseDir,
        owns: impl Fn(&PageKey, u64) -> bool,
    ) -> Result<u64, ReplayError> {
        self.drop_directory(dst);
        let mut template: Vec<PageKey> = self
            .pages
            .slots()
            .iter()
            .filter(|s| src.holds(&s.key.rel))
            .map(|s| s.key)
            .collect();
        let held: std::collections::HashSet<PageKey> = template.iter().copied().collect();
        let mut base = Vec::new();
        base_page_keys_in(self.base.root(), src, &mut base);
        template.extend(
            base.into_iter()
                .filter(|k| !held.contains(k) && !self.base_gone(k)),
        );
        let mut copied = 0;
        for key in template {
            let hash = key_hash(&key);
            if !owns(&key, hash) {
                continue;
            }
            let Some(from) = self.get_or_load(&key, hash, false)? else {
                continue;
            };
            let (mut buf, _) = self.pages.new_page();
            let s = self.pages.slot(from);
            // SAFETY: a buffer of the table not given to any slot yet.
            unsafe { buf.as_mut() }.copy_from_slice(s.page());
            let (kind, hole) = (s.kind, s.image_hole);
            let unreadable = s.unreadable.as_ref().map(|why| {
                format!(
                    "copied by Database CREATE_FILE_COPY at {lsn} from unreadable page {key}: {why}"
                )
            });
            let to = dst.page(&key);
            let slot = self.pages.insert(to, key_hash(&to), buf);
            let d = self.pages.slot_mut(slot);
            d.kind = kind;
            d.image_hole = hole;
            d.unreadable = unreadable;
            copied += 1;
        }
        Ok(copied)
    }

    /// Every page of `dir` is gone, its base files too.
    fn drop_directory(&mut self, dir: DatabaseDir) {
        self.pages.retain(|k| !dir.holds(&k.rel));
        self.dropped_dbs.insert((dir.spc_oid, dir.db_oid));
    }

    pub(super) fn apply_relation_change(&mut self, ch: &RelationChange) {
        match *ch {
            RelationChange::Create { rel, .. } => {
                self.dropped.remove(&rel);
            }
            RelationChange::Truncate {
                rel, fork, nblocks, ..
            } => {
                self.pages
                    .retain(|k| !(k.rel == rel && k.fork == fork && k.block >= nblocks));
                let e = self.truncated.entry((rel, fork)).or_insert(nblocks);
                *e = (*e).min(nblocks);
            }
            RelationChange::Drop { rel } => {
                self.pages.retain(|k| k.rel != rel);
                self.dropped.insert(rel);
            }
            RelationChange::DropDatabase { db_oid, spc_oids } => {
                for spc in spc_oids {
                    self.drop_directory(DatabaseDir {
                        spc_oid: spc,
                        db_oid,
                    });
                }
            }
            // The copy needs the page owners: `copy_database`, called by the replay.
            RelationChange::CopyDatabase { dst, .. } => self.drop_directory(dst),
        }
    }
}

fn base_gone(
    dropped: &HashSet<RelFileLocator>,
    dropped_dbs: &HashSet<(u32, u32)>,
    truncated: &HashMap<(RelFileLocator, ForkNumber), u32>,
    key: &PageKey,
) -> bool {
    (!dropped.is_empty() && dropped.contains(&key.rel))
        || (!dropped_dbs.is_empty() && dropped_dbs.contains(&(key.rel.spc_oid, key.rel.db_oid)))
        || (!truncated.is_empty()
            && truncated
                .get(&(key.rel, key.fork))
                .is_some_and(|n| key.block >= *n))
}

/// Every page of every base file that still exists, as keys.
pub(crate) fn base_page_keys(set: &PageSet) -> Vec<PageKey> {
    let mut keys = Vec::new();
    let root = set.base.root().to_path_buf();
    let Ok(spcs) = std::fs::read_dir(&root) else {
        return keys;
    };
    for spc in spcs.flatten() {
        let Ok(spc_oid) = spc.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(dbs) = std::fs::read_dir(spc.path()) else {
            continue;
        };
        for db in dbs.flatten() {
            let Ok(db_oid) = db.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            base_page_keys_in(&root, DatabaseDir { spc_oid, db_oid }, &mut keys);
        }
    }
    keys
}

/// Every page of the base files of one database directory, appended to `keys`.
fn base_page_keys_in(root: &std::path::Path, dir: DatabaseDir, keys: &mut Vec<PageKey>) {
    let path = root
        .join(dir.spc_oid.to_string())
        .join(dir.db_oid.to_string());
    let Ok(files) = std::fs::read_dir(path) else {
        return;
    };
    for f in files.flatten() {
        let Some(name) = RelationFileName::parse(&f.file_name().to_string_lossy()) else {
            continue;
        };
        let Ok(md) = f.metadata() else { continue };
        let nblocks = (md.len() / BLCKSZ as u64) as u32;
        let rel = RelFileLocator {
            spc_oid: dir.spc_oid,
            db_oid: dir.db_oid,
            rel_number: name.rel_number,
        };
        for b in 0..nblocks {
            keys.push(PageKey {
                rel,
                fork: name.fork,
                block: name.segment * RELSEG_SIZE + b,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::page::Lsn;

    fn key(db: u32, rel_number: u32, block: u32) -> PageKey {
        PageKey {
            rel: RelFileLocator {
                spc_oid: 1663,
                db_oid: db,
                rel_number,
            },
            fork: ForkNumber::MAIN,
            block,
        }
    }

    fn page_of(set: &mut PageSet, k: &PageKey) -> Option<Vec<u8>> {
        let slot = set.get_or_load(k, key_hash(k), false).ok()??;
        Some(set.pages.slot(slot).page().to_vec())
    }

    #[test]
    fn a_database_copy_takes_the_template_s_replayed_and_base_pages() {
        let root = std::env::temp_dir().join(format!("rh_copy_db_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // The template's base file: relation 16400, two blocks (0x11.., 0x22..).
        let dir = root.join("1663").join("5");
        std::fs::create_dir_all(&dir).expect("base dir");
        let mut file = vec![0x11u8; BLCKSZ];
        file.extend(vec![0x22u8; BLCKSZ]);
        std::fs::write(dir.join("16400"), &file).expect("base file");
        let mut set = PageSet::new(BaseFiles::new(root.clone()));
        // Replayed: block 1 of 16400 changed, 16401 created, unreadable.
        let b1 = key(5, 16400, 1);
        let slot = set.get_or_load(&b1, key_hash(&b1), false).unwrap().unwrap();
        set.pages.slot_mut(slot).page_mut()[100] = 0xEE;
        set.pages.slot_mut(slot).image_hole = Some((24, 8168));
        let idx = key(5, 16401, 0);
        let slot = set
            .get_or_load(&idx, key_hash(&idx), true)
            .unwrap()
            .unwrap();
        set.pages.slot_mut(slot).unreadable = Some("Hash INSERT at 0/1".into());
        // The target held an older page, gone with the copy.
        let old = key(9, 16400, 7);
        set.get_or_load(&old, key_hash(&old), true).unwrap();
        let (src, dst) = (
            DatabaseDir {
                spc_oid: 1663,
                db_oid: 5,
            },
            DatabaseDir {
                spc_oid: 1663,
                db_oid: 9,
            },
        );
        let copied = set
            .copy_database(Lsn(0x100), dst, src, |_, _| true)
            .expect("copy");
        assert_eq!(copied, 3);
        assert_eq!(
            page_of(&mut set, &key(9, 16400, 0)),
            Some(vec![0x11u8; BLCKSZ])
        );
        let b1_copy = page_of(&mut set, &key(9, 16400, 1)).expect("copied block 1");
        assert_eq!(
            (b1_copy[0], b1_copy[100]),
            (0x22, 0xEE),
            "the replayed page"
        );
        let slot = set
            .pages
            .find(&key(9, 16400, 1), key_hash(&key(9, 16400, 1)));
        assert_eq!(set.pages.slot(slot.unwrap()).image_hole, Some((24, 8168)));
        let slot = set
            .pages
            .find(&key(9, 16401, 0), key_hash(&key(9, 16401, 0)));
        let why = set
            .pages
            .slot(slot.unwrap())
            .unreadable
            .clone()
            .unwrap_or_default();
        assert!(
            why.contains("CREATE_FILE_COPY") && why.contains("Hash INSERT"),
            "{why}"
        );
        assert_eq!(
            page_of(&mut set, &old),
            None,
            "the target's older page is gone"
        );
        // The template's later changes are its own.
        let slot = set.pages.find(&b1, key_hash(&b1)).unwrap();
        set.pages.slot_mut(slot).page_mut()[100] = 0x01;
        assert_eq!(page_of(&mut set, &key(9, 16400, 1)).unwrap()[100], 0xEE);
        // A thread copies only the pages it owns.
        let third = DatabaseDir {
            spc_oid: 1663,
            db_oid: 11,
        };
        let copied = set
            .copy_database(Lsn(0x200), third, src, |k, _| k.block == 0)
            .expect("copy");
        assert_eq!(copied, 2);
        assert_eq!(page_of(&mut set, &key(11, 16400, 1)), None);
        let _ = std::fs::remove_dir_all(&root);
    }
}
