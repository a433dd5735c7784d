//! Relation-level changes: which pages exist. `smgr_redo` (`catalog/storage.c`) creates
//! and truncates relation forks; commit and abort records drop relation files
//! (`xact_redo_commit` / `xact_redo_abort` in `access/transam/xact.c`); a database drop
//! removes its directories (`dbase_redo`, `commands/dbcommands.c`).

use super::vm;
use crate::wal::block::{ForkNumber, RelFileLocator};
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
}

/// The relation-level changes of `rec` (empty for records that have none). Records whose
/// main data does not parse yield none; the decoder's typed views report those errors.
pub(crate) fn relation_changes(rec: &DecodedRecord) -> Vec<RelationChange> {
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
            if let Ok(dbase::DbaseRecord::Drop {
                db_id,
                tablespace_ids,
            }) = dbase::parse(rec)
            {
                out.extend(
                    tablespace_ids
                        .into_iter()
                        .map(|spc| RelationChange::DropDatabase {
                            db_oid: db_id,
                            spc_oids: [spc],
                        }),
                );
            }
        }
        _ => {}
    }
    out
}

/// Commit and abort records list dropped relations only when their `xl_xact_xinfo` (after
/// the 8-byte `xact_time`, present when XLOG_XACT_HAS_INFO is set) has
/// XACT_XINFO_HAS_RELFILENODES. Most transactions drop nothing: those need no full parse.
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
