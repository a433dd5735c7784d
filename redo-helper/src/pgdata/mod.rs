//! A PostgreSQL cluster's own files, read (and, by repair, written) where PostgreSQL keeps
//! them: `global/pg_control` ([`control_file`]), relation files by PostgreSQL's naming
//! ([`relpath`]), data-file pages, and `postmaster.pid` ([`lock`]), which repair holds while
//! it writes.
//!
//! Only facts of the on-disk format live here; nothing of the helper's own data directory.

pub(crate) mod control_file;
pub(crate) mod lock;
pub(crate) mod relpath;

use crate::wal::block::PageKey;
use crate::wal::page::BLCKSZ;
use relpath::{RELSEG_SIZE, pg_relation_path};
use std::path::Path;

/// A data-file page of `pgdata`, as on disk; None when its file or block does not exist.
pub(crate) fn read_pg_page(
    pgdata: &Path,
    key: &PageKey,
) -> std::io::Result<Option<Box<[u8; BLCKSZ]>>> {
    use std::os::unix::fs::FileExt;
    let seg = key.block / RELSEG_SIZE;
    let path = pg_relation_path(pgdata, &key.rel, key.fork, seg);
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut p = Box::new([0u8; BLCKSZ]);
    let off = (key.block % RELSEG_SIZE) as u64 * BLCKSZ as u64;
    match f.read_exact_at(&mut p[..], off) {
        Ok(()) => Ok(Some(p)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}
