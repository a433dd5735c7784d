//! PostgreSQL's relation file naming (`common/relpath.c`): `REL`, `REL_fsm`, `REL_vm`,
//! `REL_init`, with `.N` for each 1 GB segment after the first, and where a relation's files
//! live in a data directory.

use crate::wal::block::{ForkNumber, RelFileLocator};
use std::path::{Path, PathBuf};

/// Blocks per 1 GB relation segment (`RELSEG_SIZE` with 8 KB blocks).
pub(crate) const RELSEG_SIZE: u32 = 131_072;

/// A relation file name: relfilenode, fork and segment number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelationFileName {
    pub rel_number: u32,
    pub fork: ForkNumber,
    pub segment: u32,
}

impl RelationFileName {
    /// Parses `16384`, `16384_vm`, `16384.2`, `16384_fsm.1`; anything else is not relation data.
    pub(crate) fn parse(name: &str) -> Option<RelationFileName> {
        let (stem, segment) = match name.split_once('.') {
            Some((s, seg)) if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) => {
                (s, seg.parse().ok()?)
            }
            Some(_) => return None,
            None => (name, 0),
        };
        let (rel, fork) = match stem.split_once('_') {
            Some((r, f)) if f.bytes().all(|b| b.is_ascii_alphabetic()) => {
                (r, ForkNumber::parse(f).filter(|f| f.0 != 0)?)
            }
            Some(_) => return None,
            None => (stem, ForkNumber(0)),
        };
        if rel.is_empty() || !rel.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(RelationFileName {
            rel_number: rel.parse().ok()?,
            fork,
            segment,
        })
    }

    pub(crate) fn file_name(&self) -> String {
        let fork = match self.fork.0 {
            0 => String::new(),
            _ => format!("_{}", self.fork.name()),
        };
        let seg = if self.segment == 0 {
            String::new()
        } else {
            format!(".{}", self.segment)
        };
        format!("{}{fork}{seg}", self.rel_number)
    }
}

/// Path of a relation file in a PostgreSQL data directory (`relpath`): global/ for the
/// global tablespace (1664), base/DB/ for the default one (1663), pg_tblspc/SPC/... else.
pub(crate) fn pg_relation_path(
    pgdata: &Path,
    rel: &RelFileLocator,
    fork: ForkNumber,
    segment: u32,
) -> PathBuf {
    let file = RelationFileName {
        rel_number: rel.rel_number,
        fork,
        segment,
    }
    .file_name();
    match rel.spc_oid {
        1664 => pgdata.join("global").join(file),
        1663 => pgdata.join("base").join(rel.db_oid.to_string()).join(file),
        spc => {
            let dir = pgdata.join("pg_tblspc").join(spc.to_string());
            let version_dir = std::fs::read_dir(&dir)
                .ok()
                .and_then(|mut it| {
                    it.find_map(|e| {
                        e.ok()
                            .filter(|e| e.file_name().to_string_lossy().starts_with("PG_15"))
                    })
                })
                .map(|e| e.path())
                .unwrap_or_else(|| dir.join("PG_15"));
            version_dir.join(rel.db_oid.to_string()).join(file)
        }
    }
}
