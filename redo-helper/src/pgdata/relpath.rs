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

/// The start of the name of a user tablespace's directory for this cluster's major version,
/// `PG_<major>_` (`TABLESPACE_VERSION_DIRECTORY`, PG_<major>_<catalog version>): a tablespace
/// used by several major versions (pg_upgrade) has one such directory per version. The major
/// comes from `PGDATA/PG_VERSION`; 15 when it cannot be read.
pub(crate) fn tablespace_version_prefix(pgdata: &Path) -> String {
    let major = std::fs::read_to_string(pgdata.join("PG_VERSION"))
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(15);
    format!("PG_{major}_")
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
            let prefix = tablespace_version_prefix(pgdata);
            let version_dir = std::fs::read_dir(&dir)
                .ok()
                .and_then(|mut it| {
                    it.find_map(|e| {
                        e.ok()
                            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    })
                })
                .map(|e| e.path())
                .unwrap_or_else(|| dir.join(prefix.trim_end_matches('_')));
            version_dir.join(rel.db_oid.to_string()).join(file)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tablespace_directories_follow_the_clusters_major() {
        let d = std::env::temp_dir().join(format!("rh_relpath_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("pg_tblspc/16500/PG_15_202209061")).unwrap();
        std::fs::create_dir_all(d.join("pg_tblspc/16500/PG_17_202406281")).unwrap();
        // No PG_VERSION: 15.
        assert_eq!(tablespace_version_prefix(&d), "PG_15_");
        std::fs::write(d.join("PG_VERSION"), "17\n").unwrap();
        assert_eq!(tablespace_version_prefix(&d), "PG_17_");
        let rel = RelFileLocator {
            spc_oid: 16500,
            db_oid: 5,
            rel_number: 16384,
        };
        let path = pg_relation_path(&d, &rel, ForkNumber::MAIN, 0);
        assert_eq!(
            path,
            d.join("pg_tblspc/16500/PG_17_202406281/5/16384"),
            "{path:?}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
