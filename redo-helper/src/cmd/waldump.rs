//! `redo-helper waldump`: print WAL records like `pg_waldump`, or their statistics.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::wal::desc::format_record;
use crate::wal::page::{DEFAULT_SEGMENT_SIZE, Lsn, parse_segment_file_name};
use crate::wal::stats::WalStats;
use crate::wal::{
    DecodedRecord, FileReaderOptions, ForkNumber, PageKey, RelFileLocator, WalError, WalFileReader,
};

#[derive(clap::Args)]
pub struct WaldumpArgs {
    /// Directory holding the WAL segment files (default: the FILE's directory, or pg_wal).
    #[arg(short = 'p', long)]
    path: Option<PathBuf>,
    /// Start reading at this LSN (first record at or after it).
    #[arg(short = 's', long)]
    start: Option<Lsn>,
    /// Stop reading at this LSN.
    #[arg(short = 'e', long)]
    end: Option<Lsn>,
    /// Timeline of the segment files to read.
    #[arg(short = 't', long)]
    timeline: Option<u32>,
    /// Show statistics instead of records; `--stats=record` per record type.
    #[arg(short = 'z', long, num_args = 0..=1, require_equals = true, default_missing_value = "rmgr",
          value_parser = ["rmgr", "record"])]
    stats: Option<String>,
    /// Only records referencing this block: SPC/DB/REL[/FORK]/BLK.
    #[arg(short = 'B', long, value_parser = parse_block_filter)]
    block: Option<PageKey>,
    /// Stop after this many records.
    #[arg(short = 'n', long)]
    limit: Option<u64>,
    /// Read segment files in one pass with read(2) into buffers instead of mapping them
    /// (`--stats` over several segments is otherwise counted on several threads); for
    /// comparisons, or files that may shrink while read.
    #[arg(long)]
    no_map: bool,
    /// With --no-map: read on the decoding thread rather than a read-ahead thread, in
    /// chunks of this many KB (benchmarking the reading strategies).
    #[arg(long, hide = true)]
    direct_chunk_kb: Option<usize>,
    /// Segment files (STARTSEG [ENDSEG]); they set the default start, end and timeline.
    files: Vec<PathBuf>,
}

/// Runs `waldump` on stdout; exit status 1 on a decoding error.
pub fn main(args: WaldumpArgs) -> std::process::ExitCode {
    let opts = WaldumpOptions {
        path: args.path,
        start: args.start,
        end: args.end,
        timeline: args.timeline,
        stats: args.stats.map(|s| s == "record"),
        block: args.block,
        limit: args.limit,
        files: args.files,
        no_map: args.no_map,
        direct_chunk_kb: args.direct_chunk_kb,
    };
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    match run(&opts, &mut lock) {
        Ok(summary) => {
            if let Some(e) = summary.end_of_wal {
                match summary.last_lsn {
                    Some(l) => eprintln!("redo-helper: {e} (last record at {l})"),
                    None => eprintln!("redo-helper: {e}"),
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(msg) => {
            eprintln!("redo-helper: error: {msg}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Options of the waldump command.
#[derive(Debug, Clone, Default)]
pub(crate) struct WaldumpOptions {
    pub path: Option<PathBuf>,
    pub start: Option<Lsn>,
    pub end: Option<Lsn>,
    pub timeline: Option<u32>,
    /// `None`: print records; `Some(false)`: per-rmgr stats; `Some(true)`: per record type.
    pub stats: Option<bool>,
    /// One pass, reading segment files instead of mapping them.
    pub no_map: bool,
    /// Read (not mapped) on the decoding thread, in chunks of this many KB.
    pub direct_chunk_kb: Option<usize>,
    pub block: Option<PageKey>,
    pub limit: Option<u64>,
    pub files: Vec<PathBuf>,
}

/// Parses `SPC/DB/REL/BLK` (main fork) or `SPC/DB/REL/FORK/BLK` (fork by name or number).
pub(crate) fn parse_block_filter(s: &str) -> Result<PageKey, String> {
    let parts: Vec<&str> = s.split('/').collect();
    let num = |p: &str| {
        p.parse::<u32>()
            .map_err(|_| format!("invalid number {p:?} in block filter {s:?}"))
    };
    let (fork, blk) = match parts.len() {
        4 => (ForkNumber::MAIN, parts[3]),
        5 => (
            ForkNumber::parse(parts[3])
                .ok_or_else(|| format!("invalid fork {:?} in block filter {s:?}", parts[3]))?,
            parts[4],
        ),
        _ => return Err(format!("block filter {s:?} must be SPC/DB/REL[/FORK]/BLK")),
    };
    Ok(PageKey {
        rel: RelFileLocator {
            spc_oid: num(parts[0])?,
            db_oid: num(parts[1])?,
            rel_number: num(parts[2])?,
        },
        fork,
        block: num(blk)?,
    })
}

/// Outcome of a run: how many records were shown and how the WAL ended.
#[derive(Debug)]
pub(crate) struct WaldumpSummary {
    pub records: u64,
    pub last_lsn: Option<Lsn>,
    /// `Some` when reading stopped at the end of valid WAL (not an error).
    pub end_of_wal: Option<WalError>,
}

fn segment_size_of(file: &Path) -> Result<u32, String> {
    use std::io::Read;
    let mut f = std::fs::File::open(file)
        .map_err(|e| format!("could not open file \"{}\": {e}", file.display()))?;
    let mut h = [0u8; 40];
    f.read_exact(&mut h)
        .map_err(|e| format!("could not read file \"{}\": {e}", file.display()))?;
    match crate::wal::WalPageHeader::parse(&h).and_then(|h| h.long) {
        Some(l) if crate::wal::page::is_valid_segment_size(l.segment_size) => Ok(l.segment_size),
        _ => Err(format!(
            "file \"{}\" does not start with a valid long WAL page header",
            file.display()
        )),
    }
}

/// Resolves directory, start, end and timeline from the options (and FILE arguments,
/// which work like pg_waldump's STARTSEG [ENDSEG]).
fn resolve(opts: &WaldumpOptions) -> Result<(PathBuf, Lsn, Option<Lsn>, Option<u32>), String> {
    let mut dir = opts.path.clone();
    let mut start = opts.start;
    let mut end = opts.end;
    let mut timeline = opts.timeline;
    if let Some(first) = opts.files.first() {
        let name = first.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let seg = segment_size_of(&dir.clone().unwrap_or_default().join(first))
            .or_else(|_| segment_size_of(first))?;
        let (tli, segno) = parse_segment_file_name(name, seg)
            .ok_or_else(|| format!("invalid WAL file name {name:?}"))?;
        if dir.is_none() {
            dir = Some(
                first
                    .parent()
                    .map(Path::to_path_buf)
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or_else(|| ".".into()),
            );
        }
        timeline.get_or_insert(tli);
        let seg_start = Lsn(segno * seg as u64);
        start = Some(start.map_or(seg_start, |s| s.max(seg_start)));
        let last = opts.files.last().unwrap_or(first);
        let last_name = last.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let (_, last_segno) = parse_segment_file_name(last_name, seg)
            .ok_or_else(|| format!("invalid WAL file name {last_name:?}"))?;
        let seg_end = Lsn((last_segno + 1) * seg as u64);
        end = Some(end.map_or(seg_end, |e| e.min(seg_end)));
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from("pg_wal"));
    let start = match start {
        Some(s) => s,
        None => {
            // Earliest segment in the directory.
            let mut best: Option<(u64, u32)> = None;
            let rd = std::fs::read_dir(&dir)
                .map_err(|e| format!("could not open directory \"{}\": {e}", dir.display()))?;
            for e in rd.flatten() {
                let n = e.file_name();
                let Some(n) = n.to_str() else { continue };
                if let Some((tli, _)) = parse_segment_file_name(n, DEFAULT_SEGMENT_SIZE) {
                    if timeline.is_some_and(|t| t != tli) {
                        continue;
                    }
                    let seg = segment_size_of(&e.path()).unwrap_or(DEFAULT_SEGMENT_SIZE);
                    if let Some((_, segno)) = parse_segment_file_name(n, seg) {
                        let lsn = segno * seg as u64;
                        if best.is_none_or(|(b, _)| lsn < b) {
                            best = Some((lsn, tli));
                        }
                    }
                }
            }
            let (lsn, tli) =
                best.ok_or_else(|| format!("no WAL segment files in \"{}\"", dir.display()))?;
            timeline.get_or_insert(tli);
            Lsn(lsn)
        }
    };
    Ok((dir, start, end, timeline))
}

fn matches_block(rec: &DecodedRecord, key: &PageKey) -> bool {
    rec.blocks().iter().any(|b| b.page_key() == *key)
}

/// Runs the command, writing to `out`. Errors other than end of WAL are returned.
pub(crate) fn run(opts: &WaldumpOptions, out: &mut dyn Write) -> Result<WaldumpSummary, String> {
    let (dir, start, end, timeline) = resolve(opts)?;
    if opts.stats.is_some()
        && opts.limit.is_none()
        && !opts.no_map
        && opts.direct_chunk_kb.is_none()
        && let Some(scan) = parallel::stats(&dir, start, end, timeline, opts.block.as_ref())
    {
        let mut out = BufWriter::with_capacity(1 << 16, out);
        let io = |e: io::Error| format!("could not write output: {e}");
        out.write_all(scan.stats.render(opts.stats == Some(true)).as_bytes())
            .map_err(io)?;
        out.flush().map_err(io)?;
        return match scan.error {
            None => Ok(scan.summary),
            Some(e) => Err(match scan.summary.last_lsn {
                Some(l) => format!("error in WAL record at {l}: {e}"),
                None => e.to_string(),
            }),
        };
    }
    let mut reader = WalFileReader::open(
        &dir,
        start,
        FileReaderOptions {
            timeline,
            end,
            read_ahead: opts.direct_chunk_kb.is_none(),
            chunk_size: opts.direct_chunk_kb.map(|kb| kb.saturating_mul(1024)),
            // Segment files are read in place (`wal::mapped`): PostgreSQL never shrinks one.
            map_files: !opts.no_map && opts.direct_chunk_kb.is_none(),
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let mut out = BufWriter::with_capacity(1 << 16, out);
    let mut stats = WalStats::default();
    let mut rec = DecodedRecord::default();
    let mut line = String::with_capacity(256);
    let mut summary = WaldumpSummary {
        records: 0,
        last_lsn: None,
        end_of_wal: None,
    };
    let io = |e: io::Error| format!("could not write output: {e}");
    loop {
        match reader.next_record_into(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) if e.is_end_of_wal() => {
                summary.end_of_wal = Some(e);
                break;
            }
            Err(e) => {
                if opts.stats.is_some() {
                    out.write_all(stats.render(opts.stats == Some(true)).as_bytes())
                        .map_err(io)?;
                }
                out.flush().map_err(io)?;
                return Err(match summary.last_lsn {
                    Some(l) => format!("error in WAL record at {l}: {e}"),
                    None => e.to_string(),
                });
            }
        }
        if let Some(key) = &opts.block
            && !matches_block(&rec, key)
        {
            continue;
        }
        summary.records += 1;
        summary.last_lsn = Some(rec.lsn);
        if opts.stats.is_some() {
            stats.add(&rec);
        } else {
            line.clear();
            format_record(&rec, &mut line);
            line.push('\n');
            out.write_all(line.as_bytes()).map_err(io)?;
        }
        if opts.limit.is_some_and(|l| summary.records >= l) {
            break;
        }
    }
    if opts.stats.is_some() {
        out.write_all(stats.render(opts.stats == Some(true)).as_bytes())
            .map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(summary)
}

/// `--stats` over many segments on several threads.
///
/// Why it is exact: statistics are sums over records, so parts of the WAL can be counted
/// apart and added up, provided each part sees exactly the records a single pass would.
/// A part starts at a segment boundary, where the page header says how much of a record
/// continues from the segment before (`xlp_rem_len`): the part skips that continuation, as
/// `XLogFindNextRecord` does, and starts with the first record beginning in its segment. It
/// counts every record that begins before the next part's first segment, the last one
/// possibly ending in that segment, and decodes one more: the first record beginning at
/// or after the boundary, as a single pass would find it (checking the page headers it
/// crosses), which it does not count. Its reader may read up to `PART_OVERLAP` past the
/// boundary for those two. The parts are then joined in order only where they link up as a
/// single pass would have read them: a part's first record is the one the part before
/// found after its boundary, and its `xl_prev` names that part's last counted record.
/// Anything else (a part without records, records at the boundary longer than the
/// overlap, a part failing to open) falls back to the single pass, which then reports
/// whatever is wrong. An error inside a part that links up ends the statistics there, as
/// it would have ended the single pass.
mod parallel {
    use std::path::Path;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::wal::page::{Lsn, segment_file_name};
    use crate::wal::stats::WalStats;
    use crate::wal::{DecodedRecord, FileReaderOptions, PageKey, WalError, WalFileReader};

    use super::{WaldumpSummary, matches_block};

    /// Most threads used (beyond a few, the page cache's bandwidth is the limit).
    const MAX_THREADS: usize = 8;
    /// How far past its end a part may read to complete its last record and decode the
    /// first record of the next part (records longer than that at a boundary, such as a
    /// 20 MB logical message, send the count to one pass).
    const PART_OVERLAP: u64 = 2 << 20;
    /// Parts per thread, taken in turn: WAL is uneven (a bulk load's segments hold a few
    /// thousand records, a TPC-B-like run's a quarter of a million), and several parts per
    /// thread balance it. A part costs little beyond its segments: it reads only as much
    /// of the next segment as its last record and the one after it need. On 256 MB of
    /// pgbench WAL, four parts per thread took 0.071 s against 0.086 s for one (medians of
    /// 13 alternating runs).
    const PARTS_PER_THREAD: u64 = 4;
    /// Each part reads its segment files with `read(2)` in chunks of this size into one
    /// buffer it reuses, rather than mapping them as the single pass does. With several
    /// threads, unmapping a segment makes the kernel flush the other cores' TLBs (an
    /// interrupt to each; 10% of a 64 MB run's profile), and setting up the page tables
    /// of a mapping cost as much as copying the bytes. A buffer this size stays in the
    /// core's cache while the records in it are checked and decoded. 64 MB: 0.014 s
    /// against 0.020 s mapped; 256 MB: 0.087 s against 0.089 s (medians of 15); 128 KB
    /// and 512 KB chunks did no better.
    const READ_CHUNK: usize = 256 << 10;

    /// The outcome of a whole scan.
    pub(super) struct Scan {
        pub stats: WalStats,
        pub summary: WaldumpSummary,
        /// An error other than end of WAL, after the records counted.
        pub error: Option<WalError>,
    }

    /// How a part ended.
    enum PartEnd {
        /// It reached the first record of the next part (or the end bound, for the last).
        Done,
        /// The end bound came before a record of the part was complete.
        Incomplete,
        Failed(WalError),
    }

    struct Part {
        stats: WalStats,
        /// Records counted (those matching the block filter).
        records: u64,
        /// Position and `xl_prev` of the first record decoded.
        first: Option<(Lsn, Lsn)>,
        /// Position of the last record decoded in the part.
        last: Option<Lsn>,
        /// Position of the first record the part's reader found at or after its end: where
        /// a single pass goes on, so where the next part's first record must be.
        next: Option<Lsn>,
        /// Position of the last record counted.
        last_counted: Option<Lsn>,
        end: PartEnd,
    }

    /// Counts `[start, end)` on several threads; `None` when a single pass must do it (too
    /// few segments or threads, or parts that do not link up).
    pub(super) fn stats(
        dir: &Path,
        start: Lsn,
        end: Option<Lsn>,
        timeline: Option<u32>,
        block: Option<&PageKey>,
    ) -> Option<Scan> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS);
        if threads < 2 {
            return None;
        }
        let options = |timeline, end| FileReaderOptions {
            timeline,
            end,
            chunk_size: Some(READ_CHUNK),
            ..Default::default()
        };
        // The first part's reader learns the segment size, timeline and system identifier.
        let first = WalFileReader::open(dir, start, options(timeline, end)).ok()?;
        let seg_size = first.segment_size();
        let tli = first.timeline();
        let sysid = first.system_identifier();
        let seg = seg_size as u64;
        let first_seg = start.segment_no(seg_size);
        let last_seg = match end {
            Some(e) if e <= start => return None,
            Some(e) => (e.0 - 1) / seg,
            // To the end of the WAL: the segment files present after the start.
            None => {
                let mut s = first_seg;
                while dir.join(segment_file_name(tli, s + 1, seg_size)).exists() {
                    s += 1;
                }
                s
            }
        };
        let segments = last_seg - first_seg + 1;
        if segments < 2 {
            return None;
        }
        // Parts are taken in turn by the threads (with PARTS_PER_THREAD above one, a thread
        // given more of the machine would take more of them).
        let parts = segments.min(threads as u64 * PARTS_PER_THREAD);
        let threads = threads.min(parts as usize);
        // Part k covers segments [bounds[k], bounds[k + 1]).
        let bounds: Vec<u64> = (0..=parts)
            .map(|k| first_seg + segments * k / parts)
            .collect();
        let first = Mutex::new(Some(first));
        let next = AtomicUsize::new(0);
        let count = |k: usize| {
            let last = k + 1 == parts as usize;
            let part_end = Lsn(bounds[k + 1] * seg);
            let opened = if k == 0 {
                first.lock().ok().and_then(|mut f| f.take())
            } else {
                None
            };
            let reader = match opened {
                Some(r) => Ok(r),
                None => WalFileReader::open(
                    dir,
                    if k == 0 { start } else { Lsn(bounds[k] * seg) },
                    FileReaderOptions {
                        system_identifier: sysid,
                        ..options(
                            Some(tli),
                            if last {
                                end
                            } else {
                                // A little more for the record that crosses into the
                                // next segment (a longer one makes the part incomplete:
                                // one pass then).
                                let bound = Lsn(part_end.0 + seg.min(PART_OVERLAP));
                                Some(end.map_or(bound, |e| e.min(bound)))
                            },
                        )
                    },
                ),
            };
            count_part(reader, (!last).then_some(part_end), block)
        };
        let mut results: Vec<Option<Part>> = (0..parts).map(|_| None).collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            if k >= parts as usize {
                                return done;
                            }
                            done.push((k, count(k)));
                        }
                    })
                })
                .collect();
            for h in handles {
                // A thread that panicked leaves its parts missing: one pass then.
                for (k, part) in h.join().unwrap_or_default() {
                    results[k] = Some(part);
                }
            }
        });
        let results: Option<Vec<Part>> = results.into_iter().collect();
        join(results?)
    }

    /// Counts the records of one part: those beginning before `part_end` (`None`: all up to
    /// the reader's end bound).
    fn count_part(
        reader: Result<WalFileReader, WalError>,
        part_end: Option<Lsn>,
        block: Option<&PageKey>,
    ) -> Part {
        let mut part = Part {
            stats: WalStats::default(),
            records: 0,
            first: None,
            last: None,
            next: None,
            last_counted: None,
            end: PartEnd::Done,
        };
        let mut reader = match reader {
            Ok(r) => r,
            Err(e) => {
                part.end = PartEnd::Failed(e);
                return part;
            }
        };
        let mut rec = DecodedRecord::default();
        loop {
            match reader.next_record_into(&mut rec) {
                Ok(true) => {}
                Ok(false) => {
                    if part_end.is_some() {
                        part.end = PartEnd::Incomplete;
                    }
                    return part;
                }
                Err(e) => {
                    part.end = PartEnd::Failed(e);
                    return part;
                }
            }
            if part_end.is_some_and(|e| rec.lsn >= e) {
                part.next = Some(rec.lsn);
                return part;
            }
            part.first.get_or_insert((rec.lsn, rec.prev()));
            part.last = Some(rec.lsn);
            if block.is_some_and(|key| !matches_block(&rec, key)) {
                continue;
            }
            part.records += 1;
            part.last_counted = Some(rec.lsn);
            part.stats.add(&rec);
        }
    }

    /// The parts added up in order, up to the first that ends the WAL or fails; `None` if
    /// they do not link up as one pass would have read them.
    fn join(parts: Vec<Part>) -> Option<Scan> {
        let mut scan = Scan {
            stats: WalStats::default(),
            summary: WaldumpSummary {
                records: 0,
                last_lsn: None,
                end_of_wal: None,
            },
            error: None,
        };
        // The part before's last record and the record its reader found after it.
        let mut prev_link: Option<(Lsn, Lsn)> = None;
        for (k, part) in parts.into_iter().enumerate() {
            if k > 0 {
                let (last_lsn, next_lsn) = prev_link?;
                let (first_lsn, first_prev) = part.first?;
                if first_lsn != next_lsn || first_prev != last_lsn {
                    return None;
                }
            }
            scan.stats.merge(&part.stats);
            scan.summary.records += part.records;
            scan.summary.last_lsn = part.last_counted.or(scan.summary.last_lsn);
            match part.end {
                PartEnd::Done => prev_link = part.last.zip(part.next),
                PartEnd::Incomplete => return None,
                PartEnd::Failed(e) if e.is_end_of_wal() => {
                    scan.summary.end_of_wal = Some(e);
                    return Some(scan);
                }
                PartEnd::Failed(e) => {
                    scan.error = Some(e);
                    return Some(scan);
                }
            }
        }
        Some(scan)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn part(first: (u64, u64), last: u64, next: Option<u64>) -> Part {
            Part {
                stats: WalStats::default(),
                records: 1,
                first: Some((Lsn(first.0), Lsn(first.1))),
                last: Some(Lsn(last)),
                next: next.map(Lsn),
                last_counted: Some(Lsn(last)),
                end: PartEnd::Done,
            }
        }

        /// A part links up with the one before only at the record that part's reader found
        /// after its boundary, with `xl_prev` naming its last record. That record may lie
        /// past a page header (a record filling its page to the last byte, or a WAL switch):
        /// before, the link was computed from the last record's end, and such a boundary
        /// sent `--stats` to a second, single pass.
        #[test]
        fn parts_link_up_where_the_part_before_found_the_next_record() {
            let seg = 16u64 << 20;
            let joined = |parts: Vec<Part>| join(parts).map(|s| s.summary.records);
            // The record after the boundary begins after the segment's long page header.
            let p0 = part((seg + 40, 0x10), 2 * seg - 0x48, Some(2 * seg + 40));
            let p1 = part((2 * seg + 40, 2 * seg - 0x48), 3 * seg, None);
            assert_eq!(joined(vec![p0, p1]), Some(2));
            // Any other first record, or another xl_prev, does not link up.
            let p0 = part((seg + 40, 0x10), 2 * seg - 0x48, Some(2 * seg + 40));
            let p1 = part((2 * seg + 88, 2 * seg - 0x48), 3 * seg, None);
            assert_eq!(joined(vec![p0, p1]), None);
            let p0 = part((seg + 40, 0x10), 2 * seg - 0x48, Some(2 * seg + 40));
            let p1 = part((2 * seg + 40, 2 * seg - 0x90), 3 * seg, None);
            assert_eq!(joined(vec![p0, p1]), None);
            // A part whose reader found no record after its boundary does not link up.
            let p0 = part((seg + 40, 0x10), 2 * seg - 0x48, None);
            let p1 = part((2 * seg + 40, 2 * seg - 0x48), 3 * seg, None);
            assert_eq!(joined(vec![p0, p1]), None);
        }
    }
}
