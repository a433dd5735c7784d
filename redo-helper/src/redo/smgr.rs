//! Relation-level changes: which pages exist. `smgr_redo` (`catalog/storage.c`) creates
//! and truncates relation forks; commit and abort records drop relation files
//! (`xact_redo_commit` / `xact_redo_abort` in `access/transam/xact.c`); a database drop
//! removes its directories and `CREATE DATABASE ... STRATEGY FILE_COPY` replaces one with a
//! copy of another (`dbase_redo`, `commands/dbcommands.c`).

use super::vm;
use crate::wal::block::{ForkNumber, PageKey, RelFileLocator};
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::smgr::{self, SMGR_TRUNCATE_HEAP, SMGR_TRUNCATE_VM, SmgrRecord};
use crate::wal::rmgr::{RM_DBASE_ID, RM_SMGR_ID, RM_XACT_ID, dbase, xact};

/// A change to the set of pages a relation has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelationChange {
    /// `XLOG_SMGR_CREATE`: the fork exists (empty).
    Create {
        rel: RelFileLocator,
        fork: ForkNumber,
    },
    /// `XLOG_SMGR_TRUNCATE`: pages at or past `nblocks` of the fork are gone. For the VM
    /// fork, `vm_tail_of` is the new heap size when the last remaining VM page is partially
    /// cleared (see [`super::ImplicitChange::VmTruncateTail`]). The FSM is not tracked.
    Truncate {
        rel: RelFileLocator,
        fork: ForkNumber,
        nblocks: u32,
        vm_tail_of: Option<u32>,
    },
    /// A committed or aborted transaction dropped the relation: every fork is gone.
    Drop { rel: RelFileLocator },
    /// `XLOG_DBASE_DROP`: every relation of the database in these tablespaces is gone.
    DropDatabase { db_oid: u32, spc_oids: [u32; 1] },
    /// `XLOG_DBASE_CREATE_FILE_COPY`: the directory `dst` becomes a file-level copy of the
    /// directory `src` as of this record. `dbase_redo` removes `dst` if it exists, flushes
    /// the source database's buffers (`FlushDatabaseBuffers`), then copies every file with
    /// `copydir`; so every page of `dst` is, from here on, the page of the same relfilenode,
    /// fork and block in `src` after every record before this one, and pages `src` did not
    /// have do not exist in `dst`. `CREATE DATABASE ... STRATEGY FILE_COPY` writes one per
    /// tablespace of the template (`CreateDatabaseUsingFileCopy`), `ALTER DATABASE ... SET
    /// TABLESPACE` one from the old tablespace to the new (`movedb`, same database OID).
    CopyDatabase { dst: DatabaseDir, src: DatabaseDir },
}

/// One database's directory in one tablespace (`GetDatabasePath(db_id, tablespace_id)`):
/// the unit `dbase_redo` copies and removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DatabaseDir {
    pub spc_oid: u32,
    pub db_oid: u32,
}

impl DatabaseDir {
    /// The directory a relation's files are in.
    pub(crate) fn of(rel: &RelFileLocator) -> DatabaseDir {
        DatabaseDir {
            spc_oid: rel.spc_oid,
            db_oid: rel.db_oid,
        }
    }

    pub(crate) fn holds(&self, rel: &RelFileLocator) -> bool {
        rel.spc_oid == self.spc_oid && rel.db_oid == self.db_oid
    }

    /// The same relfilenode, fork and block in this directory (where `copydir` puts the
    /// copy of a file, or where it took it from).
    pub(crate) fn page(&self, key: &PageKey) -> PageKey {
        PageKey {
            rel: RelFileLocator {
                spc_oid: self.spc_oid,
                db_oid: self.db_oid,
                rel_number: key.rel.rel_number,
            },
            ..*key
        }
    }
}

impl std::fmt::Display for DatabaseDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.spc_oid, self.db_oid)
    }
}

/// The relation-level changes of `rec` (empty for records that have none). Records whose
/// main data does not parse yield none; the decoder's typed views report those errors.
///
/// Asked of every record, twice in a parallel replay (routing, then applying), and almost
/// every record has none: that answer is given inline, so the caller writes the empty
/// vector itself. Returned from a call, the empty vector went through the stack as three
/// 8-byte stores reloaded as one 16-byte move, a failed store forwarding per record (83%
/// of this function's samples, 2% of a two-worker pgbench replay).
#[inline]
pub(crate) fn relation_changes(rec: &DecodedRecord) -> Vec<RelationChange> {
    if !may_change_relations(rec) {
        return Vec::new();
    }
    relation_changes_of(rec)
}

/// Whether `rec` is of a kind that can create, truncate or drop relations or copy a
/// database: a look at its resource manager and, for a transaction's end, one flag word.
#[inline]
fn may_change_relations(rec: &DecodedRecord) -> bool {
    match rec.rmid() {
        RM_SMGR_ID | RM_DBASE_ID => true,
        RM_XACT_ID => xact_may_drop_relations(rec),
        _ => false,
    }
}

fn relation_changes_of(rec: &DecodedRecord) -> Vec<RelationChange> {
    let mut out = Vec::new();
    match rec.rmid() {
        RM_SMGR_ID => match smgr::parse(rec) {
            Ok(SmgrRecord::Create { rnode, fork }) => {
                out.push(RelationChange::Create { rel: rnode, fork })
            }
            Ok(SmgrRecord::Truncate {
                blkno,
                rnode,
                flags,
            }) => {
                if flags & SMGR_TRUNCATE_HEAP != 0 {
                    out.push(RelationChange::Truncate {
                        rel: rnode,
                        fork: ForkNumber::MAIN,
                        nblocks: blkno,
                        vm_tail_of: None,
                    });
                }
                if flags & SMGR_TRUNCATE_VM != 0 {
                    let (nblocks, partial) = vm::truncated_size(blkno);
                    out.push(RelationChange::Truncate {
                        rel: rnode,
                        fork: ForkNumber::VM,
                        nblocks,
                        vm_tail_of: partial.map(|_| blkno),
                    });
                }
            }
            Err(_) => {}
        },
        RM_XACT_ID if !xact_may_drop_relations(rec) => {}
        RM_XACT_ID => match xact::parse(rec) {
            Ok(xact::XactRecord::Commit(f)) | Ok(xact::XactRecord::Abort(f)) => {
                out.extend(f.rels.into_iter().map(|rel| RelationChange::Drop { rel }));
            }
            _ => {}
        },
        RM_DBASE_ID => {
            match dbase::parse(rec) {
                Ok(dbase::DbaseRecord::Drop {
                    db_id,
                    tablespace_ids,
                }) => {
                    out.extend(tablespace_ids.into_iter().map(|spc| {
                        RelationChange::DropDatabase {
                            db_oid: db_id,
                            spc_oids: [spc],
                        }
                    }));
                }
                Ok(dbase::DbaseRecord::CreateFileCopy {
                    db_id,
                    tablespace_id,
                    src_db_id,
                    src_tablespace_id,
                }) => {
                    let dst = DatabaseDir {
                        spc_oid: tablespace_id,
                        db_oid: db_id,
                    };
                    let src = DatabaseDir {
                        spc_oid: src_tablespace_id,
                        db_oid: src_db_id,
                    };
                    if src == dst {
                        // PostgreSQL never writes this; its redo would remove the directory and
                        // then copy the (now missing, created empty) source: an empty database.
                        out.push(RelationChange::DropDatabase {
                            db_oid: db_id,
                            spc_oids: [tablespace_id],
                        });
                    } else {
                        out.push(RelationChange::CopyDatabase { dst, src });
                    }
                }
                // XLOG_DBASE_CREATE_WAL_LOG only creates the directory; its contents follow as
                // full page images (`RelationCopyStorageUsingBuffer`).
                _ => {}
            }
        }
        _ => {}
    }
    out
}

/// Commit and abort records list dropped relations only when their `xl_xact_xinfo` (after
/// the 8-byte `xact_time`, present when XLOG_XACT_HAS_INFO is set) has
/// XACT_XINFO_HAS_RELFILENODES. Most transactions drop nothing: those need no full parse.
#[inline]
fn xact_may_drop_relations(rec: &DecodedRecord) -> bool {
    if rec.info() & xact::XLOG_XACT_HAS_INFO == 0 {
        return false;
    }
    match rec.main_data().get(8..12) {
        Some(b) => {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & xact::XACT_XINFO_HAS_RELFILENODES != 0
        }
        // Too short: let the parser name the problem.
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::page::Lsn;
    use crate::wal::rmgr::dbase::{XLOG_DBASE_CREATE_FILE_COPY, XLOG_DBASE_CREATE_WAL_LOG};

    /// A Database record with `main` as its main data.
    fn dbase_record(info: u8, main: &[u32]) -> DecodedRecord {
        let mut body = vec![255u8, (main.len() * 4) as u8];
        for v in main {
            body.extend_from_slice(&v.to_le_bytes());
        }
        let raw =
            crate::wal::record::tests::build_record(RM_DBASE_ID, info, 0, Lsn(0x1000000), &body);
        DecodedRecord::from_raw(Lsn(0x2000000), raw).expect("record decodes")
    }

    #[test]
    fn a_file_copy_replaces_the_target_directory_with_the_template_s() {
        // xl_dbase_create_file_copy_rec: db_id, tablespace_id, src_db_id, src_tablespace_id.
        let rec = dbase_record(XLOG_DBASE_CREATE_FILE_COPY, &[16400, 1663, 16384, 1663]);
        let dst = DatabaseDir {
            spc_oid: 1663,
            db_oid: 16400,
        };
        let src = DatabaseDir {
            spc_oid: 1663,
            db_oid: 16384,
        };
        assert_eq!(
            relation_changes(&rec),
            vec![RelationChange::CopyDatabase { dst, src }]
        );
        let key = PageKey {
            rel: RelFileLocator {
                spc_oid: 1663,
                db_oid: 16400,
                rel_number: 1259,
            },
            fork: ForkNumber::VM,
            block: 2,
        };
        assert!(dst.holds(&key.rel) && !src.holds(&key.rel));
        let template = src.page(&key);
        assert_eq!(template.to_string(), "1663/16384/1259/vm/2");
        assert_eq!(dst.page(&template), key);
        // A copy onto itself (never written) is what PostgreSQL's redo of it leaves: an empty
        // directory.
        let rec = dbase_record(XLOG_DBASE_CREATE_FILE_COPY, &[16400, 1663, 16400, 1663]);
        assert_eq!(
            relation_changes(&rec),
            vec![RelationChange::DropDatabase {
                db_oid: 16400,
                spc_oids: [1663]
            }]
        );
        // WAL_LOG creates the directory only: its pages come as images.
        let rec = dbase_record(XLOG_DBASE_CREATE_WAL_LOG, &[16400, 1663]);
        assert!(relation_changes(&rec).is_empty());
    }
}
