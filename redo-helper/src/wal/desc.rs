//! pg_waldump-style text: one line per record (`XLogDumpDisplayRecord` in
//! `bin/pg_waldump/pg_waldump.c`), main data descriptions (`*_desc` in
//! `access/rmgrdesc/*.c`, in the wording of the record's version: 16 rewrote heap and
//! btree as `key: value` lists with arrays, renamed `latestRemovedXid`, and 17 added
//! `isCatalogRel`) and block references (`XLogRecGetBlockRefInfo`).
//!
//! Descriptions exist for the rmgrs the redo engine and the store care about; other rmgrs
//! print the record type only. Timestamps are printed in UTC (pg_waldump uses the local
//! time zone; run it with `TZ=UTC` to compare).

use std::fmt::Write;

use super::block::RelFileLocator;
use super::record::DecodedRecord;
use super::rmgr::standby::InvalidationMessage;
use super::rmgr::*;

const GLOBALTABLESPACE_OID: u32 = 1664;
const DEFAULTTABLESPACE_OID: u32 = 1663;

/// `relpathperm(rnode, fork)`: the relation's path relative to the data directory, for a
/// cluster of `version` (a tablespace's directory names the version).
pub fn relpath(rel: &RelFileLocator, fork: u8, version: crate::wal::PgVersion) -> String {
    let suffix = match fork {
        0 => String::new(),
        f => format!("_{}", super::block::ForkNumber(f).name()),
    };
    if rel.spc_oid == GLOBALTABLESPACE_OID {
        format!("global/{}{suffix}", rel.rel_number)
    } else if rel.spc_oid == DEFAULTTABLESPACE_OID {
        format!("base/{}/{}{suffix}", rel.db_oid, rel.rel_number)
    } else {
        format!(
            "pg_tblspc/{}/{}/{}/{}{suffix}",
            rel.spc_oid,
            version.tablespace_version_directory(),
            rel.db_oid,
            rel.rel_number
        )
    }
}

use super::page::ShortLsn;

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `timestamptz_to_str` as pg_waldump prints it, in UTC:
/// `YYYY-MM-DD HH:MM:SS.uuuuuu UTC`. Input: microseconds since 2000-01-01.
pub fn timestamptz_to_str(ts: i64) -> String {
    const POSTGRES_EPOCH_UNIX: i64 = 946_684_800;
    let secs = ts.div_euclid(1_000_000) + POSTGRES_EPOCH_UNIX;
    // pg_waldump prints dt % USECS_PER_SEC (C remainder, may be negative).
    let usec = ts % 1_000_000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{usec:06} UTC",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// The name 15 gives a record's conflict horizon (`latestRemovedXid`) and the one 16 gave
/// it (`snapshotConflictHorizon`), followed by `sep`.
fn horizon_name(rec: &DecodedRecord, sep: &str) -> String {
    let name = if rec.version.has_catalog_rel_flags() {
        "snapshotConflictHorizon"
    } else {
        "latestRemovedXid"
    };
    format!("{name}{sep}")
}

/// `isCatalogRel` as `T` or `F` after `label`: the flag came with 16's records, and 17's
/// descriptions print it.
fn catalog_rel_desc(
    buf: &mut String,
    rec: &DecodedRecord,
    is_catalog_rel: bool,
    label: &str,
) -> std::fmt::Result {
    if rec.version >= crate::wal::PgVersion::V17 {
        write!(buf, "{label}{}", if is_catalog_rel { 'T' } else { 'F' })
    } else {
        Ok(())
    }
}

/// `array_desc` of offsets (`rmgrdesc_utils.c`, 16+): ` [a, b, c]`, ` []` when empty.
fn offsets_desc(buf: &mut String, offsets: impl IntoIterator<Item = u16>) {
    buf.push_str(" [");
    for (i, o) in offsets.into_iter().enumerate() {
        if i > 0 {
            buf.push_str(", ");
        }
        let _ = write!(buf, "{o}");
    }
    buf.push(']');
}

/// 16's `infobits_desc`: `key: [IS_MULTI, LOCK_ONLY, ...]`.
fn infobits_desc(buf: &mut String, infobits: u8, key: &str) {
    use heap::*;
    let _ = write!(buf, "{key}: [");
    let mut first = true;
    for (bit, name) in [
        (XLHL_XMAX_IS_MULTI, "IS_MULTI"),
        (XLHL_XMAX_LOCK_ONLY, "LOCK_ONLY"),
        (XLHL_XMAX_EXCL_LOCK, "EXCL_LOCK"),
        (XLHL_XMAX_KEYSHR_LOCK, "KEYSHR_LOCK"),
        (XLHL_KEYS_UPDATED, "KEYS_UPDATED"),
    ] {
        if infobits & bit != 0 {
            if !first {
                buf.push_str(", ");
            }
            first = false;
            buf.push_str(name);
        }
    }
    buf.push(']');
}

/// The little-endian `u16`s at `data[at..at + 2 * n]`, if all there.
fn u16s_at(data: &[u8], at: usize, n: usize) -> Option<Vec<u16>> {
    let bytes = data.get(at..at.checked_add(n.checked_mul(2)?)?)?;
    Some(
        bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect(),
    )
}

fn out_infobits(buf: &mut String, infobits: u8) {
    use heap::*;
    for (bit, name) in [
        (XLHL_XMAX_IS_MULTI, "IS_MULTI "),
        (XLHL_XMAX_LOCK_ONLY, "LOCK_ONLY "),
        (XLHL_XMAX_EXCL_LOCK, "EXCL_LOCK "),
        (XLHL_XMAX_KEYSHR_LOCK, "KEYSHR_LOCK "),
        (XLHL_KEYS_UPDATED, "KEYS_UPDATED "),
    ] {
        if infobits & bit != 0 {
            buf.push_str(name);
        }
    }
}

fn invalidations_desc(
    buf: &mut String,
    msgs: &[InvalidationMessage],
    db_id: u32,
    ts_id: u32,
    relcache_init_file_inval: bool,
) {
    if msgs.is_empty() {
        return;
    }
    if relcache_init_file_inval {
        let _ = write!(buf, "; relcache init file inval dbid {db_id} tsid {ts_id}");
    }
    buf.push_str("; inval msgs:");
    for m in msgs {
        let _ = match m.id {
            id if id >= 0 => write!(buf, " catcache {id}"),
            -1 => write!(buf, " catalog {}", m.oid()),
            -2 => write!(buf, " relcache {}", m.oid()),
            -3 => write!(buf, " smgr"),
            -4 => write!(buf, " relmap db {}", m.db_id()),
            -5 => write!(buf, " snapshot {}", m.oid()),
            // 18's relation-sync message (the relation at offset 8, like a relcache one).
            -6 => write!(buf, " relsync {}", m.oid()),
            id => write!(buf, " unrecognized id {id}"),
        };
    }
}

fn xact_desc(
    buf: &mut String,
    rec: &DecodedRecord,
) -> Result<(), crate::wal::error::MainDataError> {
    use xact::*;
    match xact::parse(rec)? {
        XactRecord::Commit(p) | XactRecord::Abort(p) => {
            if p.twophase_xid != 0 {
                let _ = write!(buf, "{}: ", p.twophase_xid);
            }
            buf.push_str(&timestamptz_to_str(p.xact_time));
            if !p.rels.is_empty() {
                buf.push_str("; rels:");
                for r in &p.rels {
                    let _ = write!(buf, " {}", relpath(r, 0, rec.version));
                }
            }
            if !p.subxacts.is_empty() {
                buf.push_str("; subxacts:");
                for x in &p.subxacts {
                    let _ = write!(buf, " {x}");
                }
            }
            let stats = |buf: &mut String| {
                if !p.dropped_stats.is_empty() {
                    buf.push_str("; dropped stats:");
                    for s in &p.dropped_stats {
                        let _ = write!(buf, " {}/{}/{}", s.kind, s.db_oid, s.obj_oid);
                    }
                }
            };
            let origin = |buf: &mut String| {
                if let (Some(lsn), Some(ts)) = (p.origin_lsn, p.origin_timestamp) {
                    let _ = write!(
                        buf,
                        "; origin: node {}, lsn {}, at {}",
                        rec.origin.unwrap_or(0),
                        ShortLsn(lsn),
                        timestamptz_to_str(ts)
                    );
                }
            };
            if p.is_commit {
                stats(buf);
                invalidations_desc(
                    buf,
                    &p.invals,
                    p.db_id,
                    p.ts_id,
                    p.xinfo & XACT_COMPLETION_UPDATE_RELCACHE_FILE != 0,
                );
                if p.xinfo & XACT_COMPLETION_APPLY_FEEDBACK != 0 {
                    buf.push_str("; apply_feedback");
                }
                if p.xinfo & XACT_COMPLETION_FORCE_SYNC_COMMIT != 0 {
                    buf.push_str("; sync");
                }
                origin(buf);
            } else {
                origin(buf);
                stats(buf);
            }
        }
        XactRecord::Prepare(p) => {
            // xact_desc_prepare: the parts PREPARE TRANSACTION recorded for the second
            // phase, then the invalidations (dbId is the database, tsId 0: the parser leaves
            // it unset), then the origin when the record has one.
            let _ = write!(buf, "gid {}: {}", p.gid, timestamptz_to_str(p.prepared_at));
            for (label, rels) in [
                ("rels(commit)", &p.commit_rels),
                ("rels(abort)", &p.abort_rels),
            ] {
                if !rels.is_empty() {
                    let _ = write!(buf, "; {label}:");
                    for r in rels {
                        let _ = write!(buf, " {}", relpath(r, 0, rec.version));
                    }
                }
            }
            for (label, stats) in [("commit ", &p.commit_stats), ("abort ", &p.abort_stats)] {
                if !stats.is_empty() {
                    let _ = write!(buf, "; {label}dropped stats:");
                    for s in stats {
                        let _ = write!(buf, " {}/{}/{}", s.kind, s.db_oid, s.obj_oid);
                    }
                }
            }
            if !p.subxacts.is_empty() {
                buf.push_str("; subxacts:");
                for x in &p.subxacts {
                    let _ = write!(buf, " {x}");
                }
            }
            invalidations_desc(buf, &p.invals, p.database, 0, p.init_file_inval);
            if let Some(origin) = rec.origin.filter(|&o| o != 0) {
                let _ = write!(
                    buf,
                    "; origin: node {origin}, lsn {}, at {}",
                    ShortLsn(p.origin_lsn),
                    timestamptz_to_str(p.origin_timestamp)
                );
            }
        }
        XactRecord::Assignment { xtop, xsub } => {
            let _ = write!(buf, "xtop {xtop}: subxacts:");
            for x in xsub {
                let _ = write!(buf, " {x}");
            }
        }
        XactRecord::Invalidations(msgs) => invalidations_desc(buf, &msgs, 0, 0, false),
    }
    Ok(())
}

/// `wal_level` as `get_wal_level_string` (17) names it.
fn wal_level_name(level: i32) -> &'static str {
    match level {
        0 => "minimal",
        1 => "replica",
        2 => "logical",
        _ => "?",
    }
}

fn xlog_desc(
    buf: &mut String,
    rec: &DecodedRecord,
) -> Result<(), crate::wal::error::MainDataError> {
    use xlog::*;
    match xlog::parse(rec)? {
        XlogRecord::Checkpoint {
            shutdown,
            checkpoint: c,
        } => {
            // 17 prints the wal_level after fpw (xlogdesc.c).
            let wal_level = c
                .wal_level
                .map(|l| format!(" wal_level {};", wal_level_name(l)))
                .unwrap_or_default();
            let _ = write!(
                buf,
                "redo {}; tli {}; prev tli {}; fpw {};{wal_level} xid {}:{}; oid {}; multi {}; offset {}; \
                 oldest xid {} in DB {}; oldest multi {} in DB {}; \
                 oldest/newest commit timestamp xid: {}/{}; oldest running xid {}; {}",
                ShortLsn(c.redo),
                c.this_timeline,
                c.prev_timeline,
                c.full_page_writes,
                c.next_xid >> 32,
                c.next_xid as u32,
                c.next_oid,
                c.next_multi,
                c.next_multi_offset,
                c.oldest_xid,
                c.oldest_xid_db,
                c.oldest_multi,
                c.oldest_multi_db,
                c.oldest_commit_ts_xid,
                c.newest_commit_ts_xid,
                c.oldest_active_xid,
                if shutdown { "shutdown" } else { "online" }
            );
        }
        XlogRecord::NextOid(oid) => {
            let _ = write!(buf, "{oid}");
        }
        XlogRecord::RestorePoint { name, .. } => buf.push_str(&name),
        XlogRecord::BackupEnd(lsn) => {
            let _ = write!(buf, "{}", ShortLsn(lsn));
        }
        XlogRecord::CheckpointRedo { wal_level } => {
            let _ = write!(buf, "wal_level {}", wal_level_name(wal_level));
        }
        XlogRecord::ParameterChange(p) => {
            let wal_level = wal_level_name(p.wal_level);
            let onoff = |b: bool| if b { "on" } else { "off" };
            let _ = write!(
                buf,
                "max_connections={} max_worker_processes={} max_wal_senders={} max_prepared_xacts={} \
                 max_locks_per_xact={} wal_level={} wal_log_hints={} track_commit_timestamp={}",
                p.max_connections,
                p.max_worker_processes,
                p.max_wal_senders,
                p.max_prepared_xacts,
                p.max_locks_per_xact,
                wal_level,
                onoff(p.wal_log_hints),
                onoff(p.track_commit_timestamp)
            );
        }
        XlogRecord::FpwChange(on) => buf.push_str(if on { "true" } else { "false" }),
        XlogRecord::EndOfRecovery {
            end_time,
            this_timeline,
            prev_timeline,
            wal_level,
        } => {
            let _ = write!(
                buf,
                "tli {this_timeline}; prev tli {prev_timeline}; time {}",
                timestamptz_to_str(end_time)
            );
            if let Some(l) = wal_level {
                let _ = write!(buf, "; wal_level {}", wal_level_name(l));
            }
        }
        XlogRecord::OverwriteContrecord {
            overwritten_lsn,
            overwrite_time,
        } => {
            let _ = write!(
                buf,
                "lsn {}; time {}",
                ShortLsn(overwritten_lsn),
                timestamptz_to_str(overwrite_time)
            );
        }
        XlogRecord::Noop | XlogRecord::Switch | XlogRecord::Fpi { .. } => {}
    }
    Ok(())
}

/// `heap_desc` (`access/rmgrdesc/heapdesc.c`). 16 reworded it as `key: value` lists;
/// 18's in-place updates carry invalidations.
fn heap_desc(
    buf: &mut String,
    rec: &DecodedRecord,
) -> Result<(), crate::wal::error::MainDataError> {
    use heap::*;
    let parsed = heap::parse_heap(rec)?;
    if !rec.version.has_catalog_rel_flags() {
        heap_desc_15(buf, parsed);
        return Ok(());
    }
    match parsed {
        HeapRecord::Insert(i) => {
            let _ = write!(buf, "off: {}, flags: 0x{:02X}", i.offnum, i.flags);
        }
        HeapRecord::Delete(d) => {
            let _ = write!(buf, "xmax: {}, off: {}, ", d.xmax, d.offnum);
            infobits_desc(buf, d.infobits_set, "infobits");
            let _ = write!(buf, ", flags: 0x{:02X}", d.flags);
        }
        HeapRecord::Update(u) => {
            let _ = write!(buf, "old_xmax: {}, old_off: {}, ", u.old_xmax, u.old_offnum);
            infobits_desc(buf, u.old_infobits_set, "old_infobits");
            let _ = write!(
                buf,
                ", flags: 0x{:02X}, new_xmax: {}, new_off: {}",
                u.flags, u.new_xmax, u.new_offnum
            );
        }
        HeapRecord::Truncate(t) => {
            buf.push_str("flags: [");
            let mut names = Vec::new();
            if t.flags & XLH_TRUNCATE_CASCADE != 0 {
                names.push("CASCADE");
            }
            if t.flags & XLH_TRUNCATE_RESTART_SEQS != 0 {
                names.push("RESTART_SEQS");
            }
            buf.push_str(&names.join(", "));
            let _ = write!(buf, "], nrelids: {}, relids:", t.relids.len());
            buf.push_str(" [");
            for (i, r) in t.relids.iter().enumerate() {
                let _ = write!(buf, "{}{r}", if i > 0 { ", " } else { "" });
            }
            buf.push(']');
        }
        HeapRecord::Confirm { offnum } => {
            let _ = write!(buf, "off: {offnum}");
        }
        HeapRecord::Inplace(i) => {
            let _ = write!(buf, "off: {}", i.offnum);
            invalidations_desc(buf, &i.msgs, i.db_id, i.ts_id, i.relcache_init_file_inval);
        }
        HeapRecord::Lock(l) => {
            let _ = write!(buf, "xmax: {}, off: {}, ", l.locking_xid, l.offnum);
            infobits_desc(buf, l.infobits_set, "infobits");
            let _ = write!(buf, ", flags: 0x{:02X}", l.flags);
        }
    }
    Ok(())
}

/// 15's `heap_desc`.
fn heap_desc_15(buf: &mut String, parsed: heap::HeapRecord) {
    use heap::*;
    match parsed {
        HeapRecord::Insert(i) => {
            let _ = write!(buf, "off {} flags 0x{:02X}", i.offnum, i.flags);
        }
        HeapRecord::Delete(d) => {
            let _ = write!(buf, "off {} flags 0x{:02X} ", d.offnum, d.flags);
            out_infobits(buf, d.infobits_set);
        }
        HeapRecord::Update(u) => {
            let _ = write!(
                buf,
                "off {} xmax {} flags 0x{:02X} ",
                u.old_offnum, u.old_xmax, u.flags
            );
            out_infobits(buf, u.old_infobits_set);
            let _ = write!(buf, "; new off {} xmax {}", u.new_offnum, u.new_xmax);
        }
        HeapRecord::Truncate(t) => {
            if t.flags & XLH_TRUNCATE_CASCADE != 0 {
                buf.push_str("cascade ");
            }
            if t.flags & XLH_TRUNCATE_RESTART_SEQS != 0 {
                buf.push_str("restart_seqs ");
            }
            let _ = write!(buf, "nrelids {} relids", t.relids.len());
            for r in &t.relids {
                let _ = write!(buf, " {r}");
            }
        }
        HeapRecord::Confirm { offnum } | HeapRecord::Inplace(HeapInplace { offnum, .. }) => {
            let _ = write!(buf, "off {offnum}");
        }
        HeapRecord::Lock(l) => {
            let _ = write!(
                buf,
                "off {}: xid {}: flags 0x{:02X} ",
                l.offnum, l.locking_xid, l.flags
            );
            out_infobits(buf, l.infobits_set);
        }
    }
}

/// One freeze plan as 16+ print it (`plan_elem_desc`), with its tuples' offsets.
fn freeze_plan_desc(buf: &mut String, plan: &heap::FreezePlan, offsets: &[u16]) {
    let _ = write!(
        buf,
        "{{ xmax: {}, infomask: {}, infomask2: {}, ntuples: {}, offsets:",
        plan.xmax, plan.infomask, plan.infomask2, plan.ntuples
    );
    offsets_desc(buf, offsets.iter().copied());
    buf.push_str(" }");
}

/// Freeze plans as an array (`array_desc` of `plan_elem_desc`): each plan takes the next
/// `ntuples` of `offsets`.
fn freeze_plans_desc(buf: &mut String, plans: &[heap::FreezePlan], offsets: &[u16]) {
    buf.push_str(" [");
    let mut at = 0usize;
    for (i, plan) in plans.iter().enumerate() {
        if i > 0 {
            buf.push_str(", ");
        }
        let end = (at + plan.ntuples as usize).min(offsets.len());
        freeze_plan_desc(buf, plan, offsets.get(at..end).unwrap_or(&[]));
        at = end;
    }
    buf.push(']');
}

/// Block 0's data, when the record carries some (`XLogRecHasBlockData(record, 0)`: not
/// when a full-page image replaced it).
fn block0_data(rec: &DecodedRecord) -> Option<&[u8]> {
    let b = rec.block(0)?;
    let data = rec.block_data(b);
    (!data.is_empty()).then_some(data)
}

/// `heap2_desc`: 15's wording; 16's `key: value` lists with the offset arrays of block 0's
/// data; 17's merged prune/freeze records.
fn heap2_desc(
    buf: &mut String,
    rec: &DecodedRecord,
) -> Result<(), crate::wal::error::MainDataError> {
    use heap::*;
    let parsed = heap::parse_heap2(rec)?;
    if !rec.version.has_catalog_rel_flags() {
        heap2_desc_15(buf, parsed);
        return Ok(());
    }
    match parsed {
        Heap2Record::Prune {
            latest_removed_xid,
            nredirected,
            ndead,
        } => {
            let _ = write!(
                buf,
                "snapshotConflictHorizon: {latest_removed_xid}, nredirected: {nredirected}, \
                 ndead: {ndead}"
            );
            if let Some(data) = block0_data(rec) {
                // Redirections (pairs), dead items, then unused items to the data's end.
                let (nr, nd) = (nredirected as usize, ndead as usize);
                let items = data.len() / 2;
                let (Some(pairs), Some(dead)) =
                    (u16s_at(data, 0, 2 * nr), u16s_at(data, 4 * nr, nd))
                else {
                    buf.push_str("<prune block data shorter than its counts>");
                    return Ok(());
                };
                let unused = u16s_at(data, 4 * nr + 2 * nd, items.saturating_sub(2 * nr + nd))
                    .unwrap_or_default();
                let _ = write!(buf, ", nunused: {}, redirected:", unused.len());
                redirects_desc(buf, &pairs);
                buf.push_str(", dead:");
                offsets_desc(buf, dead);
                buf.push_str(", unused:");
                offsets_desc(buf, unused);
            }
        }
        Heap2Record::Vacuum { nunused } => {
            let _ = write!(buf, "nunused: {nunused}");
            if let Some(data) = block0_data(rec) {
                match u16s_at(data, 0, nunused as usize) {
                    Some(unused) => {
                        buf.push_str(", unused:");
                        offsets_desc(buf, unused);
                    }
                    None => buf.push_str("<vacuum block data shorter than its count>"),
                }
            }
        }
        Heap2Record::FreezePlans {
            conflict_horizon,
            nplans,
        } => {
            let _ = write!(
                buf,
                "snapshotConflictHorizon: {conflict_horizon}, nplans: {nplans}"
            );
            if let Some(data) = block0_data(rec) {
                match parse_freeze_plans_block(data, nplans) {
                    Ok((plans, offsets)) => {
                        buf.push_str(", plans:");
                        freeze_plans_desc(buf, &plans, &offsets);
                    }
                    Err(e) => {
                        let _ = write!(buf, "<{e}>");
                    }
                }
            }
        }
        Heap2Record::PruneFreeze {
            flags,
            conflict_horizon,
        } => {
            // heap2_desc of 17+: the horizon when there is one, then ", isCatalogRel" (so a
            // record without a horizon begins with ", ").
            if let Some(x) = conflict_horizon {
                let _ = write!(buf, "snapshotConflictHorizon: {x}");
            }
            let _ = write!(
                buf,
                ", isCatalogRel: {}",
                if flags & XLHP_IS_CATALOG_REL != 0 {
                    'T'
                } else {
                    'F'
                }
            );
            if let Some(data) = block0_data(rec) {
                let b = match parse_prune_freeze_block(data, flags) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = write!(buf, "<{e}>");
                        return Ok(());
                    }
                };
                let _ = write!(
                    buf,
                    ", nplans: {}, nredirected: {}, ndead: {}, nunused: {}",
                    b.plans.len(),
                    b.redirected.len(),
                    b.dead.len(),
                    b.unused.len()
                );
                if !b.plans.is_empty() {
                    buf.push_str(", plans:");
                    freeze_plans_desc(buf, &b.plans, &b.frozen);
                }
                if !b.redirected.is_empty() {
                    buf.push_str(", redirected:");
                    let pairs: Vec<u16> = b.redirected.iter().flat_map(|&(f, t)| [f, t]).collect();
                    redirects_desc(buf, &pairs);
                }
                if !b.dead.is_empty() {
                    buf.push_str(", dead:");
                    offsets_desc(buf, b.dead.iter().copied());
                }
                if !b.unused.is_empty() {
                    buf.push_str(", unused:");
                    offsets_desc(buf, b.unused.iter().copied());
                }
            }
        }
        Heap2Record::FreezePage {
            cutoff_xid,
            ntuples,
        } => {
            // 15's record; a 16+ stream never has it.
            let _ = write!(buf, "cutoff xid {cutoff_xid} ntuples {ntuples}");
        }
        Heap2Record::Visible { cutoff_xid, flags } => {
            let _ = write!(
                buf,
                "snapshotConflictHorizon: {cutoff_xid}, flags: 0x{flags:02X}"
            );
        }
        Heap2Record::MultiInsert {
            flags,
            ntuples,
            init_page,
            offsets,
        } => {
            let _ = write!(buf, "ntuples: {ntuples}, flags: 0x{flags:02X}");
            if block0_data(rec).is_some() && !init_page {
                buf.push_str(", offsets:");
                offsets_desc(buf, offsets);
            }
        }
        Heap2Record::LockUpdated {
            xmax,
            offnum,
            infobits_set,
            flags,
        } => {
            let _ = write!(buf, "xmax: {xmax}, off: {offnum}, ");
            infobits_desc(buf, infobits_set, "infobits");
            let _ = write!(buf, ", flags: 0x{flags:02X}");
        }
        Heap2Record::NewCid(c) => {
            let _ = write!(
                buf,
                "rel: {}, tid: {}/{}, cmin: {}, cmax: {}, combo: {}",
                c.target_node, c.target_block, c.target_offset, c.cmin, c.cmax, c.combocid
            );
        }
        Heap2Record::Rewrite(_) => {}
    }
    Ok(())
}

/// `array_desc` of `redirect_elem_desc`: `(from, to)` pairs as ` [from->to, ...]`.
fn redirects_desc(buf: &mut String, pairs: &[u16]) {
    buf.push_str(" [");
    for (i, p) in pairs.chunks_exact(2).enumerate() {
        let _ = write!(buf, "{}{}->{}", if i > 0 { ", " } else { "" }, p[0], p[1]);
    }
    buf.push(']');
}

/// 15's `heap2_desc`.
fn heap2_desc_15(buf: &mut String, parsed: heap::Heap2Record) {
    use heap::*;
    match parsed {
        Heap2Record::Prune {
            latest_removed_xid,
            nredirected,
            ndead,
        } => {
            let _ = write!(
                buf,
                "latestRemovedXid {latest_removed_xid} nredirected {nredirected} ndead {ndead}"
            );
        }
        Heap2Record::Vacuum { nunused } => {
            let _ = write!(buf, "nunused {nunused}");
        }
        Heap2Record::FreezePage {
            cutoff_xid,
            ntuples,
        } => {
            let _ = write!(buf, "cutoff xid {cutoff_xid} ntuples {ntuples}");
        }
        Heap2Record::Visible { cutoff_xid, flags } => {
            let _ = write!(buf, "cutoff xid {cutoff_xid} flags 0x{flags:02X}");
        }
        Heap2Record::MultiInsert { flags, ntuples, .. } => {
            let _ = write!(buf, "{ntuples} tuples flags 0x{flags:02X}");
        }
        Heap2Record::LockUpdated {
            xmax,
            offnum,
            infobits_set,
            flags,
        } => {
            let _ = write!(buf, "off {offnum}: xmax {xmax}: flags 0x{flags:02X} ");
            out_infobits(buf, infobits_set);
        }
        Heap2Record::NewCid(c) => {
            let _ = write!(
                buf,
                "rel {}; tid {}/{}; cmin: {}, cmax: {}, combo: {}",
                c.target_node, c.target_block, c.target_offset, c.cmin, c.cmax, c.combocid
            );
        }
        // 16+ records; a 15 stream never has them.
        Heap2Record::PruneFreeze { .. } | Heap2Record::FreezePlans { .. } => {}
        Heap2Record::Rewrite(_) => {}
    }
}

/// `brin_desc` (`access/rmgrdesc/brindesc.c`).
fn brin_desc(
    buf: &mut String,
    rec: &DecodedRecord,
) -> Result<(), crate::wal::error::MainDataError> {
    use brin::*;
    let _ = match brin::parse(rec)? {
        BrinRecord::CreateIndex {
            pages_per_range,
            version,
        } => write!(buf, "v{version} pagesPerRange {pages_per_range}"),
        BrinRecord::Insert { insert: i, .. } => write!(
            buf,
            "heapBlk {} pagesPerRange {} offnum {}",
            i.heap_blk, i.pages_per_range, i.offnum
        ),
        BrinRecord::Update {
            old_offnum,
            insert: i,
            ..
        } => write!(
            buf,
            "heapBlk {} pagesPerRange {} old offnum {old_offnum}, new offnum {}",
            i.heap_blk, i.pages_per_range, i.offnum
        ),
        BrinRecord::SamepageUpdate { offnum } => write!(buf, "offnum {offnum}"),
        BrinRecord::RevmapExtend { target_blk } => write!(buf, "targetBlk {target_blk}"),
        BrinRecord::Desummarize {
            pages_per_range,
            heap_blk,
            reg_offset,
        } => write!(
            buf,
            "pagesPerRange {pages_per_range}, heapBlk {heap_blk}, page offset {reg_offset}"
        ),
    };
    Ok(())
}

/// `btree_desc` (`access/rmgrdesc/nbtdesc.c`): each record in its version's words: 15's,
/// or 16's `key: value` lists with the deleted and updated items of block 0's data (and
/// `isCatalogRel` from 17).
fn btree_desc(
    buf: &mut String,
    rec: &DecodedRecord,
) -> Result<(), crate::wal::error::MainDataError> {
    use btree::*;
    let v16 = rec.version.has_catalog_rel_flags();
    match btree::parse(rec)? {
        BtreeRecord::Insert { offnum, .. } => {
            let _ = write!(buf, "off{} {offnum}", if v16 { ":" } else { "" });
        }
        BtreeRecord::Split(XlBtreeSplit {
            level,
            firstrightoff,
            newitemoff,
            postingoff,
            ..
        }) => {
            let c = if v16 { ":" } else { "" };
            let _ = write!(
                buf,
                "level{c} {level}, firstrightoff{c} {firstrightoff}, \
                 newitemoff{c} {newitemoff}, postingoff{c} {postingoff}"
            );
        }
        BtreeRecord::Dedup { nintervals } => {
            let _ = write!(buf, "nintervals{} {nintervals}", if v16 { ":" } else { "" });
        }
        BtreeRecord::Vacuum { ndeleted, nupdated } => {
            if !v16 {
                let _ = write!(buf, "ndeleted {ndeleted}; nupdated {nupdated}");
                return Ok(());
            }
            let _ = write!(buf, "ndeleted: {ndeleted}, nupdated: {nupdated}");
            if let Some(data) = block0_data(rec) {
                delvacuum_desc(buf, data, ndeleted, nupdated);
            }
        }
        BtreeRecord::Delete {
            latest_removed_xid,
            ndeleted,
            nupdated,
            is_catalog_rel,
        } => {
            if !v16 {
                let _ = write!(
                    buf,
                    "latestRemovedXid {latest_removed_xid}; ndeleted {ndeleted}; \
                     nupdated {nupdated}"
                );
                return Ok(());
            }
            let _ = write!(
                buf,
                "snapshotConflictHorizon: {latest_removed_xid}, ndeleted: {ndeleted}, \
                 nupdated: {nupdated}"
            );
            let _ = catalog_rel_desc(buf, rec, is_catalog_rel, ", isCatalogRel: ");
            if let Some(data) = block0_data(rec) {
                delvacuum_desc(buf, data, ndeleted, nupdated);
            }
        }
        BtreeRecord::MarkPageHalfDead {
            leafblk,
            leftblk,
            rightblk,
            topparent,
            ..
        } => {
            let _ = if v16 {
                write!(
                    buf,
                    "topparent: {topparent}, leaf: {leafblk}, left: {leftblk}, right: {rightblk}"
                )
            } else {
                write!(
                    buf,
                    "topparent {topparent}; leaf {leafblk}; left {leftblk}; right {rightblk}"
                )
            };
        }
        BtreeRecord::UnlinkPage(XlBtreeUnlinkPage {
            leftsib,
            rightsib,
            level,
            safexid,
            leafleftsib,
            leafrightsib,
            leaftopparent,
            ..
        }) => {
            let (c, sep) = if v16 { (":", ",") } else { ("", ";") };
            let _ = write!(
                buf,
                "left{c} {leftsib}{sep} right{c} {rightsib}{sep} level{c} {level}{sep} \
                 safexid{c} {}:{}{sep} leafleft{c} {leafleftsib}{sep} \
                 leafright{c} {leafrightsib}{sep} leaftopparent{c} {leaftopparent}",
                safexid >> 32,
                safexid as u32
            );
        }
        BtreeRecord::NewRoot { level, .. } => {
            let _ = write!(buf, "{} {level}", if v16 { "level:" } else { "lev" });
        }
        BtreeRecord::ReusePage {
            node,
            latest_removed_full_xid,
            is_catalog_rel,
            ..
        } => {
            let (epoch, xid) = (
                latest_removed_full_xid >> 32,
                latest_removed_full_xid as u32,
            );
            let _ = if v16 {
                write!(buf, "rel: {node}, snapshotConflictHorizon: {epoch}:{xid}")
            } else {
                write!(buf, "rel {node}; latestRemovedXid {epoch}:{xid}")
            };
            let _ = catalog_rel_desc(buf, rec, is_catalog_rel, ", isCatalogRel: ");
        }
        BtreeRecord::MetaCleanup { metadata } => {
            if let Some(m) = metadata {
                let _ = write!(
                    buf,
                    "last_cleanup_num_delpages{} {}",
                    if v16 { ":" } else { "" },
                    m.last_cleanup_num_delpages
                );
            }
        }
    }
    Ok(())
}

/// 16's `delvacuum_desc`: block 0's deleted offsets, then the updated posting-list tuples,
/// each as its offset and the TIDs it loses (`xl_btree_update`: a `uint16` count, then that
/// many `uint16` positions in the posting list), after all the updated offsets.
fn delvacuum_desc(buf: &mut String, data: &[u8], ndeleted: u16, nupdated: u16) {
    let (nd, nu) = (ndeleted as usize, nupdated as usize);
    let (Some(deleted), Some(updated)) = (u16s_at(data, 0, nd), u16s_at(data, 2 * nd, nu)) else {
        buf.push_str("<vacuum/delete block data shorter than its counts>");
        return;
    };
    buf.push_str(", deleted:");
    offsets_desc(buf, deleted);
    buf.push_str(", updated: [");
    let mut at = 2 * (nd + nu);
    for (i, off) in updated.iter().enumerate() {
        let Some(ptids) = u16s_at(data, at, 1).and_then(|n| u16s_at(data, at + 2, n[0] as usize))
        else {
            buf.push_str("<updates cut short>");
            break;
        };
        let _ = write!(
            buf,
            "{}{{ off: {off}, nptids: {}, ptids: [",
            if i > 0 { ", " } else { "" },
            ptids.len()
        );
        for (p, t) in ptids.iter().enumerate() {
            let _ = write!(buf, "{}{t}", if p > 0 { ", " } else { "" });
        }
        buf.push_str("] }");
        at += 2 + 2 * ptids.len();
    }
    buf.push(']');
}

fn standby_desc(
    buf: &mut String,
    rec: &DecodedRecord,
) -> Result<(), crate::wal::error::MainDataError> {
    use standby::*;
    match standby::parse(rec)? {
        StandbyRecord::Lock(locks) => {
            for l in locks {
                let _ = write!(buf, "xid {} db {} rel {} ", l.xid, l.db_oid, l.rel_oid);
            }
        }
        StandbyRecord::RunningXacts {
            xcnt,
            subxcnt,
            subxid_overflow,
            next_xid,
            oldest_running_xid,
            latest_completed_xid,
            xids,
        } => {
            let _ = write!(
                buf,
                "nextXid {next_xid} latestCompletedXid {latest_completed_xid} oldestRunningXid {oldest_running_xid}"
            );
            let xcnt = xcnt.max(0) as usize;
            if xcnt > 0 {
                let _ = write!(buf, "; {xcnt} xacts:");
                for x in &xids[..xcnt.min(xids.len())] {
                    let _ = write!(buf, " {x}");
                }
            }
            // 16 renamed "ovf" and lists the subtransactions (standbydesc.c; 15 does not,
            // though the record carries them).
            let from_16 = rec.version >= crate::wal::PgVersion::V16;
            if subxid_overflow {
                buf.push_str(if from_16 {
                    "; subxid overflowed"
                } else {
                    "; subxid ovf"
                });
            }
            if from_16 && subxcnt > 0 {
                let _ = write!(buf, "; {subxcnt} subxacts:");
                for x in xids.iter().skip(xcnt) {
                    let _ = write!(buf, " {x}");
                }
            }
        }
        StandbyRecord::Invalidations {
            db_id,
            ts_id,
            relcache_init_file_inval,
            msgs,
        } => invalidations_desc(buf, &msgs, db_id, ts_id, relcache_init_file_inval),
    }
    Ok(())
}

/// `generic_desc` (`access/rmgrdesc/genericdesc.c`) walks the record's *main data* as if it
/// held fragments, but `GenericXLogFinish` never registers main data (the deltas are block
/// data): for every real generic record pg_waldump prints no description. Done the same
/// way here so the wording stays pg_waldump's for whatever main data a record might carry;
/// a fragment header cut short is reported instead of read past the end.
fn generic_desc(
    buf: &mut String,
    rec: &DecodedRecord,
) -> Result<(), crate::wal::error::MainDataError> {
    let data = rec.main_data();
    let mut r = MainDataReader::new(data, rec.lsn, "Generic", "Generic");
    while r.remaining() > 0 {
        let offset = r.u16()?;
        let length = r.u16()?;
        // PostgreSQL advances by `length` without checking it against the end.
        let next = r.position() + length as usize;
        let _ = write!(buf, "offset {offset}, length {length}");
        if next < data.len() {
            buf.push_str("; ");
            r.seek(next)?;
        } else {
            break;
        }
    }
    Ok(())
}

/// `gin_desc`. For INSERT and VACUUM_DATA_LEAF_PAGE the block data is described only when
/// block 0 has no image (the data is then not logged).
fn gin_desc(buf: &mut String, rec: &DecodedRecord) -> Result<(), crate::wal::error::MainDataError> {
    use gin::*;
    let yn = |b: bool| if b { 'T' } else { 'F' };
    // " (full page image[, for WAL verification])" when block 0 has an image, else None.
    let image_note = |buf: &mut String| -> bool {
        match rec.block(0).and_then(|b| b.image) {
            Some(img) if img.apply() => buf.push_str(" (full page image)"),
            Some(_) => buf.push_str(" (full page image, for WAL verification)"),
            None => return false,
        }
        true
    };
    let block0_data = || rec.block(0).map(|b| rec.block_data(b)).unwrap_or(&[]);
    match gin::parse(rec)? {
        GinRecord::Insert { flags, children } => {
            let _ = write!(
                buf,
                "isdata: {} isleaf: {}",
                yn(GinRecord::is_data(flags)),
                yn(GinRecord::is_leaf(flags))
            );
            if let Some((left, right)) = children {
                let _ = write!(buf, " children: {left}/{right}");
            }
            if !image_note(buf) {
                let data = block0_data();
                if !GinRecord::is_data(flags) {
                    let e = parse_insert_entry(rec, data)?;
                    let _ = write!(buf, " isdelete: {}", yn(e.is_delete));
                } else if GinRecord::is_leaf(flags) {
                    recompress_desc(buf, rec, data)?;
                } else {
                    let i = parse_insert_data_internal(rec, data)?;
                    let g = |o: usize| u16::from_le_bytes([i.new_item[o], i.new_item[o + 1]]);
                    let child = (g(0) as u32) << 16 | g(2) as u32;
                    let key_blk = (g(4) as u32) << 16 | g(6) as u32;
                    let _ = write!(buf, " pitem: {child}-{key_blk}/{}", g(8));
                }
            }
        }
        GinRecord::Split { flags } => {
            let _ = write!(
                buf,
                "isrootsplit: {} isdata: {} isleaf: {}",
                yn(flags & GIN_SPLIT_ROOT != 0),
                yn(GinRecord::is_data(flags)),
                yn(GinRecord::is_leaf(flags))
            );
        }
        GinRecord::VacuumDataLeafPage => {
            if !image_note(buf) {
                recompress_desc(buf, rec, block0_data())?;
            }
        }
        GinRecord::DeleteListPages { ndeleted, .. } => {
            let _ = write!(buf, "ndeleted: {ndeleted}");
        }
        GinRecord::CreatePostingTree { .. }
        | GinRecord::VacuumPage
        | GinRecord::DeletePage { .. }
        | GinRecord::UpdateMetaPage { .. }
        | GinRecord::InsertListPage { .. } => {}
    }
    Ok(())
}

/// `gist_desc` (`access/rmgrdesc/gistdesc.c`; PAGE_UPDATE and ASSIGN_LSN print nothing).
/// 15 says `latestRemovedXid`, 16 `snapshotConflictHorizon`, 17 adds `isCatalogRel`.
fn gist_desc(
    buf: &mut String,
    rec: &DecodedRecord,
) -> Result<(), crate::wal::error::MainDataError> {
    use gist::GistRecord;
    let horizon = horizon_name(rec, " ");
    let _ = match gist::parse(rec)? {
        GistRecord::PageReuse {
            node,
            block,
            latest_removed_full_xid,
            is_catalog_rel,
        } => {
            let _ = write!(
                buf,
                "rel {node}; blk {block}; {horizon}{}:{}",
                latest_removed_full_xid >> 32,
                latest_removed_full_xid as u32
            );
            catalog_rel_desc(buf, rec, is_catalog_rel, ", isCatalogRel ")
        }
        GistRecord::Delete {
            latest_removed_xid,
            ntodelete,
            is_catalog_rel,
            ..
        } => {
            let _ = write!(
                buf,
                "delete: {horizon}{latest_removed_xid}, nitems: {ntodelete}"
            );
            catalog_rel_desc(buf, rec, is_catalog_rel, ", isCatalogRel ")
        }
        GistRecord::PageSplit { npage, .. } => write!(buf, "page_split: splits to {npage} pages"),
        GistRecord::PageDelete {
            delete_xid,
            downlink_offset,
        } => write!(
            buf,
            "deleteXid {}:{}; downlink {downlink_offset}",
            delete_xid >> 32,
            delete_xid as u32
        ),
        GistRecord::PageUpdate { .. } | GistRecord::AssignLsn => Ok(()),
    };
    Ok(())
}

/// `spg_desc` (`access/rmgrdesc/spgdesc.c`): VACUUM_REDIRECT's horizon is
/// `newestredirectxid` on 15, `snapshotConflictHorizon` from 16, with `isCatalogRel` from 17.
fn spg_desc(buf: &mut String, rec: &DecodedRecord) -> Result<(), crate::wal::error::MainDataError> {
    use spgist::SpgRecord;
    let flag = |buf: &mut String, on: bool, what: &str| {
        if on {
            buf.push_str(what);
        }
    };
    match spgist::parse(rec)? {
        SpgRecord::AddLeaf {
            new_page,
            stores_nulls,
            offnum_leaf,
            offnum_head_leaf,
            offnum_parent,
            node_i,
            ..
        } => {
            let _ = write!(
                buf,
                "off: {offnum_leaf}, headoff: {offnum_head_leaf}, parentoff: {offnum_parent}, \
                 nodeI: {node_i}"
            );
            flag(buf, new_page, " (newpage)");
            flag(buf, stores_nulls, " (nulls)");
        }
        SpgRecord::MoveLeafs {
            n_moves,
            new_page,
            replace_dead,
            stores_nulls,
            offnum_parent,
            node_i,
            ..
        } => {
            let _ = write!(
                buf,
                "nmoves: {n_moves}, parentoff: {offnum_parent}, nodeI: {node_i}"
            );
            flag(buf, new_page, " (newpage)");
            flag(buf, replace_dead, " (replacedead)");
            flag(buf, stores_nulls, " (nulls)");
        }
        SpgRecord::AddNode {
            offnum,
            offnum_new,
            new_page,
            parent_blk,
            offnum_parent,
            node_i,
            ..
        } => {
            let _ = write!(
                buf,
                "off: {offnum}, newoff: {offnum_new}, parentBlk: {parent_blk}, \
                 parentoff: {offnum_parent}, nodeI: {node_i}"
            );
            flag(buf, new_page, " (newpage)");
        }
        SpgRecord::SplitTuple {
            offnum_prefix,
            offnum_postfix,
            new_page,
            postfix_blk_same,
            ..
        } => {
            let _ = write!(
                buf,
                "prefixoff: {offnum_prefix}, postfixoff: {offnum_postfix}"
            );
            flag(buf, new_page, " (newpage)");
            flag(buf, postfix_blk_same, " (same)");
        }
        SpgRecord::PickSplit {
            is_root_split,
            n_delete,
            n_insert,
            offnum_inner,
            stores_nulls,
            inner_is_parent,
            offnum_parent,
            node_i,
            ..
        } => {
            let _ = write!(
                buf,
                "ndelete: {n_delete}, ninsert: {n_insert}, inneroff: {offnum_inner}, \
                 parentoff: {offnum_parent}, nodeI: {node_i}"
            );
            flag(buf, inner_is_parent, " (innerIsParent)");
            flag(buf, stores_nulls, " (nulls)");
            flag(buf, is_root_split, " (isRootSplit)");
        }
        SpgRecord::VacuumLeaf {
            to_dead,
            to_placeholder,
            move_src,
            chain_src,
            ..
        } => {
            let _ = write!(
                buf,
                "ndead: {}, nplaceholder: {}, nmove: {}, nchain: {}",
                to_dead.len(),
                to_placeholder.len(),
                move_src.len(),
                chain_src.len()
            );
        }
        SpgRecord::VacuumRoot { to_delete, .. } => {
            let _ = write!(buf, "ndelete: {}", to_delete.len());
        }
        SpgRecord::VacuumRedirect {
            first_placeholder,
            newest_redirect_xid,
            is_catalog_rel,
            to_placeholder,
        } => {
            let horizon = if rec.version.has_catalog_rel_flags() {
                "snapshotConflictHorizon"
            } else {
                "newestredirectxid"
            };
            let _ = write!(
                buf,
                "ntoplaceholder: {}, firstplaceholder: {first_placeholder}, \
                 {horizon}: {newest_redirect_xid}",
                to_placeholder.len()
            );
            let _ = catalog_rel_desc(buf, rec, is_catalog_rel, ", isCatalogRel: ");
        }
    }
    Ok(())
}

/// `desc_recompress_leaf`.
fn recompress_desc(
    buf: &mut String,
    rec: &DecodedRecord,
    data: &[u8],
) -> Result<(), crate::wal::error::MainDataError> {
    use gin::SegmentAction;
    let actions = gin::parse_recompress(rec, data)?;
    let _ = write!(buf, " {} segments:", actions.len());
    for (segno, a) in actions {
        let _ = match a {
            SegmentAction::AddItems(items) => write!(
                buf,
                " {segno} (add {} items)",
                items.len() / gin::ITEM_POINTER_SIZE
            ),
            SegmentAction::Delete => write!(buf, " {segno} (delete)"),
            SegmentAction::Insert(_) => write!(buf, " {segno} (insert)"),
            SegmentAction::Replace(_) => write!(buf, " {segno} (replace)"),
        };
    }
    Ok(())
}

/// C's `%g` (six significant digits, the shorter of `%e` and `%f` with trailing zeros
/// removed), as `hash_desc` prints its tuple counts.
fn format_g(v: f64) -> String {
    const PRECISION: i32 = 6;
    if v.is_nan() {
        return if v.is_sign_negative() { "-nan" } else { "nan" }.into();
    }
    if v.is_infinite() {
        return if v < 0.0 { "-inf" } else { "inf" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // The exponent %e would print, after rounding to PRECISION digits.
    let e_form = format!("{:.*e}", (PRECISION - 1) as usize, v);
    let (mantissa, exp) = e_form.split_once('e').unwrap_or((&e_form, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if (-4..PRECISION).contains(&exp) {
        trim(&format!("{:.*}", (PRECISION - 1 - exp) as usize, v))
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    }
}

/// `hash_desc`: VACUUM_ONE_PAGE's horizon is `latestRemovedXid` on 15,
/// `snapshotConflictHorizon` from 16, with `isCatalogRel` from 17.
fn hash_desc(
    buf: &mut String,
    rec: &DecodedRecord,
) -> Result<(), crate::wal::error::MainDataError> {
    use hash::HashRecord;
    let tf = |b: bool| if b { 'T' } else { 'F' };
    let _ = match hash::parse(rec)? {
        HashRecord::InitMetaPage {
            num_tuples,
            ffactor,
            ..
        } => write!(
            buf,
            "num_tuples {}, fillfactor {ffactor}",
            format_g(num_tuples)
        ),
        HashRecord::InitBitmapPage { bmsize } => write!(buf, "bmsize {bmsize}"),
        HashRecord::Insert { offnum } => write!(buf, "off {offnum}"),
        HashRecord::AddOvflPage {
            bmsize,
            bmpage_found,
        } => write!(buf, "bmsize {bmsize}, bmpage_found {}", tf(bmpage_found)),
        HashRecord::SplitAllocatePage {
            new_bucket, flags, ..
        } => write!(
            buf,
            "new_bucket {new_bucket}, meta_page_masks_updated {}, issplitpoint_changed {}",
            tf(flags & hash::XLH_SPLIT_META_UPDATE_MASKS != 0),
            tf(flags & hash::XLH_SPLIT_META_UPDATE_SPLITPOINT != 0)
        ),
        HashRecord::SplitComplete {
            old_bucket_flag,
            new_bucket_flag,
        } => write!(
            buf,
            "old_bucket_flag {old_bucket_flag}, new_bucket_flag {new_bucket_flag}"
        ),
        HashRecord::MovePageContents {
            ntups,
            is_prim_bucket_same_wrt,
        } => write!(
            buf,
            "ntups {ntups}, is_primary {}",
            tf(is_prim_bucket_same_wrt)
        ),
        HashRecord::SqueezePage {
            prevblkno,
            nextblkno,
            ntups,
            is_prim_bucket_same_wrt,
            ..
        } => write!(
            buf,
            "prevblkno {prevblkno}, nextblkno {nextblkno}, ntups {ntups}, is_primary {}",
            tf(is_prim_bucket_same_wrt)
        ),
        HashRecord::Delete {
            clear_dead_marking,
            is_primary_bucket_page,
        } => write!(
            buf,
            "clear_dead_marking {}, is_primary {}",
            tf(clear_dead_marking),
            tf(is_primary_bucket_page)
        ),
        HashRecord::UpdateMetaPage { ntuples } => write!(buf, "ntuples {}", format_g(ntuples)),
        HashRecord::VacuumOnePage {
            latest_removed_xid,
            ntuples,
            is_catalog_rel,
            ..
        } => {
            let _ = write!(
                buf,
                "ntuples {ntuples}, {}{latest_removed_xid}",
                horizon_name(rec, " ")
            );
            catalog_rel_desc(buf, rec, is_catalog_rel, ", isCatalogRel ")
        }
        HashRecord::SplitPage | HashRecord::SplitCleanup => Ok(()),
    };
    Ok(())
}

fn small_desc(
    buf: &mut String,
    rec: &DecodedRecord,
) -> Result<(), crate::wal::error::MainDataError> {
    let info = rec.rmgr_info();
    let mut r = MainDataReader::new(rec.main_data(), rec.lsn, "", "");
    match rec.rmid() {
        RM_SMGR_ID => match smgr::parse(rec)? {
            smgr::SmgrRecord::Create { rnode, fork } => {
                buf.push_str(&relpath(&rnode, fork.0, rec.version))
            }
            smgr::SmgrRecord::Truncate {
                blkno,
                rnode,
                flags,
            } => {
                let _ = write!(
                    buf,
                    "{} to {blkno} blocks flags {}",
                    relpath(&rnode, 0, rec.version),
                    flags as i32
                );
            }
        },
        RM_DBASE_ID => match dbase::parse(rec)? {
            dbase::DbaseRecord::CreateFileCopy {
                db_id,
                tablespace_id,
                src_db_id,
                src_tablespace_id,
            } => {
                let _ = write!(
                    buf,
                    "copy dir {src_tablespace_id}/{src_db_id} to {tablespace_id}/{db_id}"
                );
            }
            dbase::DbaseRecord::CreateWalLog {
                db_id,
                tablespace_id,
            } => {
                let _ = write!(buf, "create dir {tablespace_id}/{db_id}");
            }
            dbase::DbaseRecord::Drop {
                db_id,
                tablespace_ids,
            } => {
                buf.push_str("dir");
                for t in tablespace_ids {
                    let _ = write!(buf, " {t}/{db_id}");
                }
            }
        },
        RM_SEQ_ID => {
            let s = seq::parse(rec)?;
            let _ = write!(buf, "rel {}", s.node);
        }
        RM_CLOG_ID | RM_COMMIT_TS_ID => {
            // 17 made SLRU page numbers 64-bit.
            let page = if rec.version >= crate::wal::PgVersion::V17 {
                r.i64()?
            } else {
                r.i32()?.into()
            };
            if info == 0x00 && rec.rmid() == RM_CLOG_ID {
                let _ = write!(buf, "page {page}");
            } else if info == 0x00 {
                // commit_ts_desc prints a zeroed page's number alone.
                let _ = write!(buf, "{page}");
            } else if rec.rmid() == RM_CLOG_ID {
                let _ = write!(buf, "page {page}; oldestXact {}", r.u32()?);
            } else {
                let _ = write!(buf, "pageno {page}, oldestXid {}", r.u32()?);
            }
        }
        RM_RELMAP_ID => {
            let dbid = r.u32()?;
            let tsid = r.u32()?;
            let nbytes = r.i32()?;
            let _ = write!(buf, "database {dbid} tablespace {tsid} size {nbytes}");
        }
        RM_LOGICALMSG_ID if info == 0x00 => {
            // logicalmsg_desc: xl_logical_message is dbId (0), transactional (4),
            // prefix_size (8) and message_size (16), then the prefix (NUL included) and
            // the payload, printed as hex bytes.
            let _db_id = r.u32()?;
            let transactional = r.bool()?;
            r.seek(8)?;
            let prefix_size = r.u64()?;
            let message_size = r.u64()?;
            let prefix_len = usize::try_from(prefix_size)
                .map_err(|_| r.error(format!("prefix_size {prefix_size}")))?;
            let message_len = usize::try_from(message_size)
                .map_err(|_| r.error(format!("message_size {message_size}")))?;
            let prefix = r.bytes(prefix_len)?;
            let prefix = prefix.split(|&b| b == 0).next().unwrap_or_default();
            let message = r.bytes(message_len)?;
            let _ = write!(
                buf,
                "{}, prefix \"{}\"; payload ({message_len} bytes): ",
                if transactional {
                    "transactional"
                } else {
                    "non-transactional"
                },
                String::from_utf8_lossy(prefix)
            );
            for (i, b) in message.iter().enumerate() {
                let _ = write!(buf, "{}{b:02X}", if i > 0 { " " } else { "" });
            }
        }
        RM_TBLSPC_ID => {
            let ts_id = r.u32()?;
            if info == 0x00 {
                let path = r.cstring()?;
                let _ = write!(buf, "{ts_id} \"{path}\"");
            } else {
                let _ = write!(buf, "{ts_id}");
            }
        }
        _ => {}
    }
    Ok(())
}

/// Appends the rmgr-specific description of `rec` (pg_waldump's `rm_desc`). Records whose
/// main data is too short get a bracketed note instead of garbage.
pub fn describe(rec: &DecodedRecord, buf: &mut String) {
    let res = match rec.rmid() {
        RM_XLOG_ID => xlog_desc(buf, rec),
        RM_XACT_ID => xact_desc(buf, rec),
        RM_HEAP_ID => heap_desc(buf, rec),
        RM_HEAP2_ID => heap2_desc(buf, rec),
        RM_BTREE_ID => btree_desc(buf, rec),
        RM_BRIN_ID => brin_desc(buf, rec),
        RM_GIN_ID => gin_desc(buf, rec),
        RM_GIST_ID => gist_desc(buf, rec),
        RM_HASH_ID => hash_desc(buf, rec),
        RM_SPGIST_ID => spg_desc(buf, rec),
        RM_STANDBY_ID => standby_desc(buf, rec),
        RM_GENERIC_ID => generic_desc(buf, rec),
        _ => small_desc(buf, rec),
    };
    if let Err(e) = res {
        let _ = write!(buf, "<{e}>");
    }
}

/// True for the rmgrs [`describe`] covers with pg_waldump's wording.
pub fn has_pg_waldump_desc(rmid: u8) -> bool {
    matches!(
        rmid,
        RM_XLOG_ID
            | RM_XACT_ID
            | RM_SMGR_ID
            | RM_CLOG_ID
            | RM_DBASE_ID
            | RM_TBLSPC_ID
            | RM_RELMAP_ID
            | RM_STANDBY_ID
            | RM_HEAP2_ID
            | RM_HEAP_ID
            | RM_BTREE_ID
            | RM_BRIN_ID
            | RM_GIN_ID
            | RM_GIST_ID
            | RM_HASH_ID
            | RM_SPGIST_ID
            | RM_SEQ_ID
            | RM_COMMIT_TS_ID
            | RM_GENERIC_ID
            | RM_LOGICALMSG_ID
    )
}

/// Appends the block references in pg_waldump's short format
/// (`, blkref #N: rel S/D/R [fork F ]blk B[ FPW[ for WAL verification]]`).
pub fn block_refs(rec: &DecodedRecord, buf: &mut String) {
    for b in rec.blocks() {
        let _ = write!(buf, ", blkref #{}: rel {}", b.id, b.rel);
        if b.fork.0 != 0 {
            let _ = write!(buf, " fork {}", b.fork.name());
        }
        let _ = write!(buf, " blk {}", b.block);
        if let Some(img) = b.image {
            buf.push_str(if img.apply() {
                " FPW"
            } else {
                " FPW for WAL verification"
            });
        }
    }
}

/// Formats one pg_waldump line (without the trailing newline) into `buf`.
pub fn format_record(rec: &DecodedRecord, buf: &mut String) {
    let _ = write!(
        buf,
        "rmgr: {:<11} len (rec/tot): {:>6}/{:>6}, tx: {:>10}, lsn: {:?}, prev {:?}, desc: {} ",
        rec.rmgr().name(),
        rec.rec_len(),
        rec.total_len(),
        rec.xid(),
        rec.lsn,
        rec.prev(),
        crate::wal::rmgr::record_type_name_of(rec.version, rec.rmid(), rec.info())
    );
    describe(rec, buf);
    block_refs(rec, buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::PgVersion;

    #[test]
    fn timestamps() {
        assert_eq!(timestamptz_to_str(0), "2000-01-01 00:00:00.000000 UTC");
        // 2026-11-25 06:34:59.799420 UTC
        let secs: i64 = 1_795_588_499 - 946_684_800;
        assert_eq!(
            timestamptz_to_str(secs * 1_000_000 + 799_420),
            "2026-11-25 06:34:59.799420 UTC"
        );
    }

    #[test]
    fn format_g_is_printf_g() {
        for (v, want) in [
            (0.0, "0"),
            (1.0, "1"),
            (12345.0, "12345"),
            (123456.0, "123456"),
            (999999.5, "1e+06"),
            (1234567.0, "1.23457e+06"),
            (20000000.0, "2e+07"),
            (0.5, "0.5"),
            (0.0001, "0.0001"),
            (0.00001234, "1.234e-05"),
            (-3.25, "-3.25"),
            (1e100, "1e+100"),
        ] {
            assert_eq!(format_g(v), want, "{v}");
        }
    }

    #[test]
    fn generic_records_describe_their_main_data_only() {
        use crate::wal::page::Lsn;
        let rec = |main: &[u8]| {
            let mut body = Vec::new();
            if !main.is_empty() {
                body.extend_from_slice(&[255, main.len() as u8]);
                body.extend_from_slice(main);
            }
            let raw = crate::wal::record::tests::build_record(RM_GENERIC_ID, 0, 0, Lsn(0), &body);
            DecodedRecord::from_raw(Lsn(0x1000000), raw).unwrap()
        };
        let desc = |r: &DecodedRecord| {
            let mut s = String::new();
            describe(r, &mut s);
            s
        };
        // What GenericXLogFinish writes: no main data, no description.
        assert_eq!(desc(&rec(&[])), "");
        assert_eq!(
            desc(&rec(&[10, 0, 2, 0, 1, 2, 20, 0, 0, 0])),
            "offset 10, length 2; offset 20, length 0"
        );
        assert!(desc(&rec(&[10, 0, 2])).starts_with('<'));
    }

    #[test]
    fn running_xacts_are_described_as_each_version_does() {
        use crate::wal::page::Lsn;
        // xl_running_xacts: xcnt 1, subxcnt 2, overflowed, nextXid 900, oldestRunningXid
        // 800, latestCompletedXid 850, xids 800 801 802.
        let mut main = Vec::new();
        for v in [1i32, 2] {
            main.extend_from_slice(&v.to_le_bytes());
        }
        main.extend_from_slice(&[1, 0, 0, 0]);
        for v in [900u32, 800, 850, 800, 801, 802] {
            main.extend_from_slice(&v.to_le_bytes());
        }
        let mut body = vec![255, main.len() as u8];
        body.extend_from_slice(&main);
        let raw = crate::wal::record::tests::build_record(
            RM_STANDBY_ID,
            crate::wal::rmgr::standby::XLOG_RUNNING_XACTS,
            0,
            Lsn(0),
            &body,
        );
        let mut rec = DecodedRecord::from_raw(Lsn(0x1000000), raw).unwrap();
        let head = "nextXid 900 latestCompletedXid 850 oldestRunningXid 800; 1 xacts: 800";
        for (version, tail) in [
            (PgVersion::V15, "; subxid ovf"),
            (PgVersion::V16, "; subxid overflowed; 2 subxacts: 801 802"),
            (PgVersion::V18, "; subxid overflowed; 2 subxacts: 801 802"),
        ] {
            rec.version = version;
            let mut s = String::new();
            describe(&rec, &mut s);
            assert_eq!(s, format!("{head}{tail}"), "{version:?}");
        }
    }

    #[test]
    fn relpaths() {
        let r = RelFileLocator {
            spc_oid: 1663,
            db_oid: 5,
            rel_number: 16384,
        };
        assert_eq!(relpath(&r, 0, PgVersion::V15), "base/5/16384");
        assert_eq!(relpath(&r, 2, PgVersion::V16), "base/5/16384_vm");
        let g = RelFileLocator {
            spc_oid: 1664,
            db_oid: 0,
            rel_number: 1262,
        };
        assert_eq!(relpath(&g, 0, PgVersion::V17), "global/1262");
        let t = RelFileLocator {
            spc_oid: 16500,
            db_oid: 5,
            rel_number: 7,
        };
        assert_eq!(
            relpath(&t, 1, PgVersion::V15),
            "pg_tblspc/16500/PG_15_202209061/5/7_fsm"
        );
        assert_eq!(
            relpath(&t, 0, PgVersion::V18),
            "pg_tblspc/16500/PG_18_202506291/5/7"
        );
    }
}
