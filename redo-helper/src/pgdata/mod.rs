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

/// A relation segment file of a data directory.
#[derive(Debug, Clone)]
pub(crate) struct RelationFile {
    pub rel: crate::wal::block::RelFileLocator,
    pub name: relpath::RelationFileName,
    pub path: std::path::PathBuf,
}

/// Every relation segment file of `pgdata`, where [`relpath::pg_relation_path`] puts them:
/// `global/` (tablespace 1664, database 0), `base/DB/` (1663) and
/// `pg_tblspc/SPC/PG_.../DB/`. Other files (temporary relations, `pg_filenode.map`, ...)
/// are not relation files and are skipped.
pub(crate) fn relation_files(pgdata: &Path) -> std::io::Result<Vec<RelationFile>> {
    let mut dirs: Vec<(u32, u32, std::path::PathBuf)> = vec![(1664, 0, pgdata.join("global"))];
    let numbered = |dir: &Path| -> std::io::Result<Vec<(u32, std::path::PathBuf)>> {
        let mut out = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for e in entries {
                    let e = e?;
                    if let Ok(n) = e.file_name().to_string_lossy().parse::<u32>() {
                        out.push((n, e.path()));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(out)
    };
    for (db, path) in numbered(&pgdata.join("base"))? {
        dirs.push((1663, db, path));
    }
    let version_prefix = relpath::tablespace_version_prefix(pgdata);
    for (spc, link) in numbered(&pgdata.join("pg_tblspc"))? {
        // The tablespace's directory holds one catalog-version directory per major version
        // that used it (PG_15_202209061): the cluster's, which `pg_relation_path` picks.
        let Ok(versions) = std::fs::read_dir(&link) else {
            continue;
        };
        for v in versions.flatten() {
            if v.file_name().to_string_lossy().starts_with(&version_prefix) {
                for (db, path) in numbered(&v.path())? {
                    dirs.push((spc, db, path));
                }
            }
        }
    }
    let mut files = Vec::new();
    for (spc_oid, db_oid, dir) in dirs {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            let Some(name) = relpath::RelationFileName::parse(&e.file_name().to_string_lossy())
            else {
                continue;
            };
            files.push(RelationFile {
                rel: crate::wal::block::RelFileLocator {
                    spc_oid,
                    db_oid,
                    rel_number: name.rel_number,
                },
                name,
                path: e.path(),
            });
        }
    }
    Ok(files)
}

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
