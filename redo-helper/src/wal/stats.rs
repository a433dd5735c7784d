//! WAL statistics as `pg_waldump --stats[=record]` computes and prints them
//! (`XLogRecStoreStats`, `XLogDumpDisplayStats`).

use std::fmt::Write;

use super::page::Lsn;
use super::record::DecodedRecord;
use super::rmgr::{RM_XACT_ID, RmgrId, identify_of};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsRow {
    pub count: u64,
    pub rec_len: u64,
    pub fpi_len: u64,
}

impl StatsRow {
    fn add(&mut self, rec_len: u64, fpi_len: u64) {
        self.count += 1;
        self.rec_len += rec_len;
        self.fpi_len += fpi_len;
    }

    /// Adds another row's counts (the same rmgr or record type, counted elsewhere).
    fn absorb(&mut self, other: &StatsRow) {
        self.count += other.count;
        self.rec_len += other.rec_len;
        self.fpi_len += other.fpi_len;
    }
}

/// Counters per record type (rmgr, and the upper four bits of `xl_info`). An rmgr's row is
/// the sum of its record types' (every record counts in exactly one of them), added up when
/// asked for rather than counted apart: one counter update per record instead of two, on
/// the path of every record decoded.
#[derive(Debug, Clone)]
pub struct WalStats {
    pub start: Option<Lsn>,
    pub end: Lsn,
    pub count: u64,
    /// The version of the records counted: it names their types (17 renamed Heap2's).
    pub version: Option<crate::wal::PgVersion>,
    /// Indexed by rmgr id then record type: a fixed size, so a `u8` index needs no check.
    record: Box<[[StatsRow; 16]; 256]>,
}

impl Default for WalStats {
    fn default() -> Self {
        WalStats {
            start: None,
            end: Lsn(0),
            count: 0,
            version: None,
            record: Box::new([[StatsRow::default(); 16]; 256]),
        }
    }
}

impl WalStats {
    #[inline]
    pub fn add(&mut self, rec: &DecodedRecord) {
        let fpi = rec.fpi_len() as u64;
        let rec_len = (rec.total_len() as u64).saturating_sub(fpi);
        let rmid = rec.rmid() as usize;
        self.start.get_or_insert(rec.lsn);
        self.end = rec.end_lsn;
        self.count += 1;
        self.version = Some(rec.version);
        let mut recid = (rec.info() >> 4) as usize;
        // Transaction records use the top bit as a flag (XLOG_XACT_HAS_INFO).
        if rec.rmid() == RM_XACT_ID {
            recid &= 0x07;
        }
        self.record[rmid][recid].add(rec_len, fpi);
    }

    /// Adds the statistics of the records that follow this one's (the next part of the
    /// same WAL, counted on its own): the range ends where `later`'s does, if it has any.
    pub fn merge(&mut self, later: &WalStats) {
        if later.start.is_none() {
            return;
        }
        self.start = self.start.or(later.start);
        self.end = later.end;
        self.count += later.count;
        self.version = later.version.or(self.version);
        for (mine, theirs) in self.record.iter_mut().zip(later.record.iter()) {
            for (m, t) in mine.iter_mut().zip(theirs) {
                m.absorb(t);
            }
        }
    }

    pub fn rmgr_row(&self, rmid: u8) -> StatsRow {
        let mut row = StatsRow::default();
        for r in &self.record[rmid as usize] {
            row.absorb(r);
        }
        row
    }

    fn row(out: &mut String, name: &str, r: StatsRow, totals: (u64, u64, u64, u64)) {
        let pct = |n: u64, t: u64| {
            if t == 0 {
                0.0
            } else {
                100.0 * n as f64 / t as f64
            }
        };
        let (tc, tr, tf, tt) = totals;
        let tot = r.rec_len + r.fpi_len;
        let _ = writeln!(
            out,
            "{:<27} {:>20} ({:>6.2}) {:>20} ({:>6.2}) {:>20} ({:>6.2}) {:>20} ({:>6.2})",
            name,
            r.count,
            pct(r.count, tc),
            r.rec_len,
            pct(r.rec_len, tr),
            r.fpi_len,
            pct(r.fpi_len, tf),
            tot,
            pct(tot, tt)
        );
    }

    /// The table pg_waldump prints (per rmgr, or per record type with `per_record`).
    pub fn render(&self, per_record: bool) -> String {
        let mut out = String::new();
        let (mut tr, mut tf) = (0u64, 0u64);
        for r in self.record.iter().flatten() {
            tr += r.rec_len;
            tf += r.fpi_len;
        }
        let totals = (self.count, tr, tf, tr + tf);
        let _ = writeln!(
            out,
            "WAL statistics between {} and {}:",
            self.start.unwrap_or(Lsn(0)).short(),
            self.end.short()
        );
        let _ = writeln!(
            out,
            "{:<27} {:>20} {:>8} {:>20} {:>8} {:>20} {:>8} {:>20} {:>8}",
            "Type", "N", "(%)", "Record size", "(%)", "FPI size", "(%)", "Combined size", "(%)"
        );
        let _ = writeln!(
            out,
            "{:<27} {:>20} {:>8} {:>20} {:>8} {:>20} {:>8} {:>20} {:>8}",
            "----", "-", "---", "-----------", "---", "--------", "---", "-------------", "---"
        );
        for rmid in 0..=255u8 {
            let id = RmgrId(rmid);
            if !id.is_valid() {
                continue;
            }
            if !per_record {
                let r = self.rmgr_row(rmid);
                if !id.is_builtin() && r.count == 0 {
                    continue;
                }
                Self::row(&mut out, &id.name(), r, totals);
            } else {
                for (recid, r) in self.record[rmid as usize].iter().enumerate() {
                    if r.count == 0 {
                        continue;
                    }
                    let info = (recid as u8) << 4;
                    let name = match identify_of(self.version.unwrap_or_default(), rmid, info) {
                        Some(n) => format!("{}/{}", id.name(), n),
                        None => format!("{}/UNKNOWN ({:x})", id.name(), info),
                    };
                    Self::row(&mut out, &name, *r, totals);
                }
            }
        }
        let _ = writeln!(
            out,
            "{:<27} {:>20} {:>8} {:>20} {:>8} {:>20} {:>8} {:>20}",
            "", "--------", "", "--------", "", "--------", "", "--------"
        );
        let tt = tr + tf;
        let pct = |n: u64| {
            if tt == 0 {
                0.0
            } else {
                100.0 * n as f64 / tt as f64
            }
        };
        let _ = writeln!(
            out,
            "{:<27} {:>20} {:<9}{:>20} {:<9}{:>20} {:<9}{:>20} {:<6}",
            "Total",
            self.count,
            "",
            tr,
            format!("[{:.2}%]", pct(tr)),
            tf,
            format!("[{:.2}%]", pct(tf)),
            tt,
            "[100%]"
        );
        out
    }
}
