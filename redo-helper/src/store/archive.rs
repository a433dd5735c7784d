//! The WAL archive: the compute's WAL bytes in segment files named and laid out exactly as
//! in `pg_wal` (so `pg_waldump` reads them), written in order and made durable before the
//! helper reports them flushed.
//!
//! Three positions are kept apart: `write` (bytes handed to the OS), `flush` (fsynced, and
//! recorded in `wal/flushed`), and what the decoder has consumed (tracked by the caller).
//! Only `flush` is ever acknowledged to the server, and after a crash the archive resumes at
//! the recorded flush position: bytes past it are overwritten by the re-sent stream.

use super::{sync_dir, write_atomic};
use crate::sync::{read, write};
use crate::wal::page::{Lsn, segment_file_name};
use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ArchiveError {
    #[error("WAL archive {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("WAL stream gap: expected bytes at {expected}, server sent {got}")]
    Gap { expected: Lsn, got: Lsn },
    #[error("WAL archive state {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
}

impl ArchiveError {
    /// True when the disk is full (ENOSPC/EDQUOT): wait and retry rather than give up.
    pub(crate) fn is_disk_full(&self) -> bool {
        matches!(self, ArchiveError::Io { source, .. } if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }
}

pub(crate) struct WalArchive {
    dir: PathBuf,
    segment_size: u32,
    timeline: u32,
    write_pos: Lsn,
    flush_pos: Lsn,
    /// Open segment files with bytes written since the last flush (segno → file).
    dirty: BTreeMap<u64, File>,
    /// A segment file was created since the last flush: the directory needs an fsync.
    dir_dirty: bool,
    /// `wal/flushed`, open once and rewritten in place.
    flushed_file: Option<File>,
}

/// Bytes of the flush position record in `wal/flushed`: the LSN as text, padded with spaces,
/// and a newline. Rewritten in place: a write this small at offset 0 lies in one 512-byte
/// sector, which disks write atomically (the assumption PostgreSQL makes for pg_control,
/// also rewritten in place). Creating a temporary file, renaming it and syncing the
/// directory ten times a second cost the helper a tenth of its CPU in ext4 inode allocation.
const FLUSHED_RECORD_LEN: usize = 32;

fn flushed_record(lsn: Lsn) -> [u8; FLUSHED_RECORD_LEN] {
    let mut rec = [b' '; FLUSHED_RECORD_LEN];
    let text = lsn.to_string();
    let n = text.len().min(FLUSHED_RECORD_LEN - 1);
    rec[..n].copy_from_slice(&text.as_bytes()[..n]);
    rec[FLUSHED_RECORD_LEN - 1] = b'\n';
    rec
}

fn flushed_path(dir: &Path) -> PathBuf {
    dir.join("flushed")
}

/// Records `lsn` as the flush position of the archive in `dir` (a restored archive: see
/// `remote::Remote::restore`).
pub(crate) fn record_flush_position(dir: &Path, lsn: Lsn) -> Result<(), ArchiveError> {
    let path = flushed_path(dir);
    write_atomic(&path, &flushed_record(lsn)).map_err(|source| ArchiveError::Io { path, source })
}

impl WalArchive {
    /// Opens (or creates) the archive; a new archive starts at `start`.
    pub(crate) fn open(
        dir: &Path,
        segment_size: u32,
        timeline: u32,
        start: Lsn,
    ) -> Result<WalArchive, ArchiveError> {
        let io_err = |source| ArchiveError::Io {
            path: dir.to_path_buf(),
            source,
        };
        super::create_private_dir_all(dir).map_err(io_err)?;
        let fp = flushed_path(dir);
        let flush_pos = match fs::read_to_string(&fp) {
            Ok(text) => text
                .trim()
                .parse::<Lsn>()
                .map_err(|e| ArchiveError::Damaged {
                    path: fp.clone(),
                    reason: e.to_string(),
                })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => start,
            Err(source) => return Err(ArchiveError::Io { path: fp, source }),
        };
        Ok(WalArchive {
            dir: dir.to_path_buf(),
            segment_size,
            timeline,
            write_pos: flush_pos,
            flush_pos,
            dirty: BTreeMap::new(),
            dir_dirty: false,
            flushed_file: None,
        })
    }

    pub(crate) fn write_position(&self) -> Lsn {
        self.write_pos
    }

    pub(crate) fn flush_position(&self) -> Lsn {
        self.flush_pos
    }
    pub(crate) fn segment_path(&self, segno: u64) -> PathBuf {
        self.dir
            .join(segment_file_name(self.timeline, segno, self.segment_size))
    }

    fn segment_file(&mut self, segno: u64) -> Result<&File, ArchiveError> {
        if !self.dirty.contains_key(&segno) {
            let path = self.segment_path(segno);
            let existed = path.exists();
            let f = super::private_file_options()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|source| ArchiveError::Io {
                    path: path.clone(),
                    source,
                })?;
            if !existed {
                // Full-size (sparse) like a pg_wal segment, so readers see zeros past the end.
                f.set_len(u64::from(self.segment_size))
                    .map_err(|source| ArchiveError::Io {
                        path: path.clone(),
                        source,
                    })?;
                self.dir_dirty = true;
            }
            self.dirty.insert(segno, f);
        }
        self.dirty.get(&segno).ok_or_else(|| ArchiveError::Io {
            path: self.dir.clone(),
            source: io::Error::other("segment file vanished from the open set"),
        })
    }

    /// Appends bytes that start at `start`. Bytes the archive already has (a resend after
    /// reconnecting) are skipped; a gap is an error.
    pub(crate) fn write(&mut self, start: Lsn, data: &[u8]) -> Result<(), ArchiveError> {
        let end = start.add(data.len() as u64);
        if start > self.write_pos {
            return Err(ArchiveError::Gap {
                expected: self.write_pos,
                got: start,
            });
        }
        if end <= self.write_pos {
            return Ok(());
        }
        let mut pos = self.write_pos;
        let mut rest = &data[(self.write_pos.0 - start.0) as usize..];
        // Below the headroom kept for retention this is a full disk, as ENOSPC would be.
        super::check_headroom(&self.dir, rest.len() as u64).map_err(|source| {
            log::warn!(
                "WAL archive: less than the reserve (--disk-reserve) free on {}: waiting for retention to make room",
                self.dir.display()
            );
            ArchiveError::Io {
                path: self.dir.clone(),
                source,
            }
        })?;
        let seg = u64::from(self.segment_size);
        while !rest.is_empty() {
            let segno = pos.0 / seg;
            let off = pos.0 % seg;
            let n = rest.len().min((seg - off) as usize);
            let path = self.segment_path(segno);
            let f = self.segment_file(segno)?;
            f.write_all_at(&rest[..n], off)
                .map_err(|source| ArchiveError::Io { path, source })?;
            pos = pos.add(n as u64);
            rest = &rest[n..];
        }
        self.write_pos = pos;
        Ok(())
    }

    /// Makes everything written durable and records the new flush position. Returns it.
    pub(crate) fn flush(&mut self) -> Result<Lsn, ArchiveError> {
        if self.write_pos == self.flush_pos && self.dirty.is_empty() {
            return Ok(self.flush_pos);
        }
        for (segno, f) in &self.dirty {
            f.sync_data().map_err(|source| ArchiveError::Io {
                path: self.segment_path(*segno),
                source,
            })?;
        }
        if self.dir_dirty {
            sync_dir(&self.dir).map_err(|source| ArchiveError::Io {
                path: self.dir.clone(),
                source,
            })?;
            self.dir_dirty = false;
        }
        self.record_flushed(self.write_pos)?;
        self.flush_pos = self.write_pos;
        // Keep only the current segment open.
        let current = self.write_pos.0 / u64::from(self.segment_size);
        self.dirty.retain(|segno, _| *segno == current);
        Ok(self.flush_pos)
    }

    /// Durably records `lsn` in `wal/flushed` (created, synced with its directory, the first
    /// time; then rewritten in place and fdatasync'ed).
    fn record_flushed(&mut self, lsn: Lsn) -> Result<(), ArchiveError> {
        let fp = flushed_path(&self.dir);
        let err = |source| ArchiveError::Io {
            path: flushed_path(&self.dir),
            source,
        };
        let rec = flushed_record(lsn);
        if let Some(f) = &self.flushed_file {
            f.write_all_at(&rec, 0).map_err(err)?;
            return f.sync_data().map_err(err);
        }
        if fp.exists() {
            let f = OpenOptions::new().write(true).open(&fp).map_err(err)?;
            f.write_all_at(&rec, 0).map_err(err)?;
            f.sync_data().map_err(err)?;
            self.flushed_file = Some(f);
        } else {
            write_atomic(&fp, &rec).map_err(err)?;
        }
        Ok(())
    }

    /// Reads archived bytes [from, to) into `out` (used to rebuild the index at start-up).
    pub(crate) fn read(&self, from: Lsn, to: Lsn, out: &mut Vec<u8>) -> Result<(), ArchiveError> {
        read_segment_files(&self.dir, self.timeline, self.segment_size, from, to, out)
    }
}

/// Appends the WAL bytes [from, to) held by the segment files of `dir` (laid out as in
/// `pg_wal`: the archive's own, or a cluster's) to `out`.
pub(crate) fn read_segment_files(
    dir: &Path,
    timeline: u32,
    segment_size: u32,
    from: Lsn,
    to: Lsn,
    out: &mut Vec<u8>,
) -> Result<(), ArchiveError> {
    let seg = u64::from(segment_size);
    let mut pos = from;
    while pos < to {
        let segno = pos.0 / seg;
        let off = pos.0 % seg;
        let n = (to.0 - pos.0).min(seg - off) as usize;
        let path = dir.join(segment_file_name(timeline, segno, segment_size));
        let at = out.len();
        out.resize(at + n, 0);
        // From the bucket when the local cache evicted the segment.
        super::cache::read_exact_at(&path, &mut out[at..], off)
            .map_err(|source| ArchiveError::Io { path, source })?;
        pos = pos.add(n as u64);
    }
    Ok(())
}

/// The newest archived WAL, kept in memory as the chunks the ingest made durable: image
/// generation reads the deltas of a page moments after they arrived, and reading a record
/// from here is a copy instead of a system call (at a thousand images a second of 17 deltas
/// each, the reads were a large part of the helper's CPU). Holds only bytes already fsynced
/// into the archive, so it never says anything the archive does not.
pub(crate) struct RecentWal {
    chunks: RwLock<RecentChunks>,
    capacity: usize,
}

#[derive(Default)]
struct RecentChunks {
    /// (start LSN, bytes), contiguous and in order.
    list: VecDeque<(Lsn, Arc<[u8]>)>,
    bytes: usize,
}

/// Default size of the in-memory WAL tail: at a busy compute's ~10 MB/s, several seconds.
pub(crate) const RECENT_WAL_BYTES: usize = 64 << 20;

impl RecentWal {
    pub(crate) fn new(capacity: usize) -> RecentWal {
        RecentWal {
            chunks: RwLock::new(RecentChunks::default()),
            capacity,
        }
    }

    /// Adds durable bytes starting at `start`; a chunk not following the last one starts
    /// the tail over. The oldest chunks go beyond the capacity.
    pub(crate) fn push(&self, start: Lsn, bytes: &[u8]) {
        if self.capacity == 0 || bytes.is_empty() {
            return;
        }
        let mut c = write(&self.chunks);
        if c.list
            .back()
            .is_some_and(|(s, b)| s.add(b.len() as u64) != start)
        {
            c.list.clear();
            c.bytes = 0;
        }
        c.list.push_back((start, Arc::from(bytes)));
        c.bytes += bytes.len();
        while c.bytes > self.capacity && c.list.len() > 1 {
            if let Some((_, b)) = c.list.pop_front() {
                c.bytes -= b.len();
            }
        }
    }

    /// Whether the byte at `pos` is held in memory.
    pub(crate) fn holds(&self, pos: Lsn) -> bool {
        let c = read(&self.chunks);
        let i = c.list.partition_point(|(s, _)| *s <= pos);
        i.checked_sub(1)
            .and_then(|i| c.list.get(i))
            .is_some_and(|(s, b)| pos.0 - s.0 < b.len() as u64)
    }

    /// Copies the bytes at `pos` into `out` when one chunk holds all of them.
    pub(crate) fn copy_into(&self, pos: Lsn, out: &mut [u8]) -> bool {
        let c = read(&self.chunks);
        let i = c.list.partition_point(|(s, _)| *s <= pos);
        let Some((s, b)) = i.checked_sub(1).and_then(|i| c.list.get(i)) else {
            return false;
        };
        let off = (pos.0 - s.0) as usize;
        match b.get(off..off + out.len()) {
            Some(src) => {
                out.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// Random access to records in the archive, by LSN (for page reconstruction).
pub(crate) struct RecordReader {
    dir: PathBuf,
    segment_size: u32,
    timeline: u32,
    cfg: crate::wal::reader::DecoderConfig,
    buf: Vec<u8>,
    /// The segment file read last: a page's deltas are mostly in one segment, so a read of
    /// its chain opens it once. The page store keeps a few readers for reuse and drops them
    /// when retention removes segments, so a removed segment is not held open for long.
    open: Option<(u64, File)>,
    /// Reused from record to record (its buffers stay allocated).
    decoder: Option<crate::wal::reader::WalStreamDecoder>,
    /// Consulted before the segment files.
    recent: Option<Arc<RecentWal>>,
}

/// The first read of a record: most records are far smaller than the rest of their WAL page,
/// and copying the whole page out of the page cache for each was most of a read's cost.
const FIRST_READ: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordReadError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("no complete record at {lsn} in the archive: {reason}")]
    Decode { lsn: Lsn, reason: String },
}

impl RecordReader {
    pub(crate) fn new(
        archive: &WalArchive,
        system_identifier: u64,
        version: crate::wal::PgVersion,
    ) -> RecordReader {
        RecordReader {
            dir: archive.dir.clone(),
            segment_size: archive.segment_size,
            timeline: archive.timeline,
            cfg: crate::wal::reader::DecoderConfig {
                segment_size: archive.segment_size,
                system_identifier: Some(system_identifier),
                timeline: Some(archive.timeline),
                // Records are read from their start, not a page header: the version
                // cannot be learnt and must be given.
                version: Some(version),
            },
            buf: Vec::new(),
            open: None,
            decoder: None,
            recent: None,
        }
    }

    /// Reads bytes `recent` holds from memory.
    pub(crate) fn with_recent(mut self, recent: Arc<RecentWal>) -> RecordReader {
        self.recent = Some(recent);
        self
    }

    /// A reader of the same archive with its own buffer (one per thread).
    pub(crate) fn clone_empty(&self) -> RecordReader {
        RecordReader {
            dir: self.dir.clone(),
            segment_size: self.segment_size,
            timeline: self.timeline,
            cfg: self.cfg,
            buf: Vec::new(),
            open: None,
            decoder: None,
            recent: self.recent.clone(),
        }
    }

    /// Of the records starting at `lsns` (in order), those not in memory: asks the OS to
    /// start reading the WAL page each starts in (see [`super::prefetch`]), so the reads of
    /// a chain from a cold archive overlap. Returns how many were asked for.
    pub(crate) fn prefetch(&mut self, lsns: impl Iterator<Item = Lsn>) -> usize {
        let seg = u64::from(self.segment_size);
        let mut asked = 0;
        // Other segments than the one kept open, for this call only (a chain spans few).
        let mut others: Vec<(u64, File)> = Vec::new();
        for lsn in lsns {
            if self.recent.as_ref().is_some_and(|r| r.holds(lsn)) {
                continue;
            }
            let segno = lsn.0 / seg;
            let file = match &self.open {
                Some((n, f)) if *n == segno => f,
                _ => match others.iter().position(|(n, _)| *n == segno) {
                    Some(i) => &others[i].1,
                    None => {
                        let path = self.dir.join(segment_file_name(
                            self.timeline,
                            segno,
                            self.segment_size,
                        ));
                        // A missing segment is reported by the read that needs it.
                        let Ok(f) = File::open(path) else { continue };
                        others.push((segno, f));
                        &others[others.len() - 1].1
                    }
                },
            };
            let page = (lsn.0 % seg) & !(8192 - 1);
            super::prefetch(file, page, 8192);
            asked += 1;
        }
        asked
    }

    /// Decodes the record that starts at `lsn` into `out`.
    pub(crate) fn read_into(
        &mut self,
        lsn: Lsn,
        out: &mut crate::wal::record::DecodedRecord,
    ) -> Result<(), RecordReadError> {
        let err = |reason: String| RecordReadError::Decode { lsn, reason };
        let decoder = match &mut self.decoder {
            Some(d) => {
                d.restart(lsn).map_err(|e| err(e.to_string()))?;
                d
            }
            slot => slot.insert(
                crate::wal::reader::WalStreamDecoder::new(lsn, self.cfg)
                    .map_err(|e| err(e.to_string()))?,
            ),
        };
        let seg = u64::from(self.segment_size);
        let mut pos = lsn;
        // A first small read, then up to the end of the WAL page, then page by page.
        let mut limit = FIRST_READ;
        loop {
            let page_end = (pos.0 / 8192 + 1) * 8192;
            let n = (page_end - pos.0).min(limit);
            limit = u64::MAX;
            let mut chunk = std::mem::take(&mut self.buf);
            chunk.resize(n as usize, 0);
            if !self
                .recent
                .as_ref()
                .is_some_and(|r| r.copy_into(pos, &mut chunk))
            {
                let segno = pos.0 / seg;
                let dir = &self.dir;
                let (timeline, segment_size) = (self.timeline, self.segment_size);
                let path = || dir.join(segment_file_name(timeline, segno, segment_size));
                let f = match &mut self.open {
                    Some((open_segno, f)) if *open_segno == segno => Some(&*f),
                    slot => match File::open(path()) {
                        Ok(f) => Some(&slot.insert((segno, f)).1),
                        // Evicted by the local cache: read through it (from the bucket).
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                        Err(source) => {
                            return Err(ArchiveError::Io {
                                path: path(),
                                source,
                            }
                            .into());
                        }
                    },
                };
                match f {
                    Some(f) => f.read_exact_at(&mut chunk, pos.0 % seg),
                    None => super::cache::read_exact_at(&path(), &mut chunk, pos.0 % seg),
                }
                .map_err(|source| ArchiveError::Io {
                    path: path(),
                    source,
                })?;
            }
            self.buf = decoder.push_owned(chunk);
            match decoder.next_record_into(out) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(err(e.to_string())),
            }
            pos = Lsn(pos.0 + n);
            if pos.0 - lsn.0 > (1u64 << 30) + 8192 {
                return Err(err("record longer than the WAL record size limit".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::DecodedRecord;
    use crate::wal::page::DEFAULT_SEGMENT_SIZE;
    use crate::wal::reader::tests::{SEG_START, WalBuilder, build_record, main_data_long};

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rh_archive_{tag}_{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn recent_wal_serves_contiguous_tails_only() {
        let r = RecentWal::new(100);
        let bytes: Vec<u8> = (0..=255u8).collect();
        r.push(Lsn(1000), &bytes[..40]);
        r.push(Lsn(1040), &bytes[40..80]);
        let mut out = [0u8; 10];
        assert!(r.copy_into(Lsn(1035), &mut out[..5]));
        assert_eq!(&out[..5], &bytes[35..40]);
        assert!(r.copy_into(Lsn(1070), &mut out));
        assert_eq!(out, bytes[70..80]);
        // Across two chunks, before the first, past the last: not from memory.
        assert!(!r.copy_into(Lsn(1035), &mut out));
        assert!(!r.copy_into(Lsn(999), &mut out[..1]));
        assert!(!r.copy_into(Lsn(1075), &mut out));
        // Beyond the capacity the oldest chunk goes.
        r.push(Lsn(1080), &bytes[80..120]);
        assert!(!r.copy_into(Lsn(1000), &mut out));
        assert!(r.copy_into(Lsn(1110), &mut out));
        assert_eq!(out, bytes[110..120]);
        // A chunk that does not follow starts over.
        r.push(Lsn(5000), &bytes[..10]);
        assert!(!r.copy_into(Lsn(1110), &mut out));
        assert!(r.copy_into(Lsn(5000), &mut out));
        assert_eq!(out, bytes[..10]);
    }

    #[test]
    fn writes_across_segments_and_resumes_at_flush() {
        let dir = tmpdir("seg");
        let seg = 1 << 20; // small segments for the test
        let start = Lsn(3 * seg as u64 - 10);
        let mut a = WalArchive::open(&dir, seg, 1, start).unwrap();
        let data: Vec<u8> = (0..100u8).collect();
        a.write(start, &data).unwrap();
        assert_eq!(a.write_position(), start.add(100));
        assert_eq!(a.flush_position(), start);
        assert_eq!(a.flush().unwrap(), start.add(100));
        // Unflushed bytes after a "crash" are forgotten: reopen resumes at the flush point.
        a.write(start.add(100), &[7; 10]).unwrap();
        drop(a);
        let mut a = WalArchive::open(&dir, seg, 1, Lsn(0)).unwrap();
        assert_eq!(a.write_position(), start.add(100));
        // A resend of known bytes is skipped; a gap is refused.
        a.write(start.add(50), &data[50..]).unwrap();
        assert!(matches!(
            a.write(start.add(200), &[1]),
            Err(ArchiveError::Gap { .. })
        ));
        let mut out = Vec::new();
        a.read(start, start.add(100), &mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(fs::metadata(a.segment_path(2)).unwrap().len(), seg as u64);
        assert!(a.segment_path(3).ends_with("000000010000000000000003"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_state_is_an_error() {
        let dir = tmpdir("bad");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("flushed"), "nonsense").unwrap();
        assert!(matches!(
            WalArchive::open(&dir, 1 << 24, 1, Lsn(0)),
            Err(ArchiveError::Damaged { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The archive's record reader, reused from record to record (decoder restarted, a small
    /// first read, then the rest of the page and whole pages), reads every record exactly,
    /// in any order: small ones, ones just over the first read, and ones across pages.
    #[test]
    fn archive_record_reader_reads_records_of_every_size_in_any_order() {
        let mut w = WalBuilder { out: Vec::new() };
        let mut prev = Lsn(0);
        let mut expect = Vec::new();
        for (i, len) in [4usize, 900, 1000, 1100, 3000, 7000, 20000, 16, 8100, 40]
            .into_iter()
            .cycle()
            .take(60)
            .enumerate()
        {
            let body = main_data_long(len + i);
            let lsn = w.record(&build_record(10, 0x00, 9, prev, &body), None);
            expect.push((lsn, len + i));
            prev = lsn;
        }
        w.pad_to_page();
        let dir = std::env::temp_dir().join(format!("rh_reader_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut archive = WalArchive::open(&dir, DEFAULT_SEGMENT_SIZE, 1, Lsn(SEG_START)).unwrap();
        archive.write(Lsn(SEG_START), &w.out).unwrap();
        archive.flush().unwrap();
        let mut reader = RecordReader::new(&archive, 7, crate::wal::PgVersion::V15);
        let mut rec = DecodedRecord::default();
        // Forwards, backwards, and strided, all with the same reader.
        let n = expect.len();
        let order: Vec<usize> = (0..n)
            .chain((0..n).rev())
            .chain((0..n).map(|i| i * 7 % n))
            .collect();
        for i in order {
            let (lsn, len) = expect[i];
            reader.read_into(lsn, &mut rec).unwrap();
            assert_eq!(rec.lsn, lsn);
            assert_eq!(rec.main_data().len(), len, "record {i} at {lsn}");
            assert!(
                rec.main_data()
                    .iter()
                    .enumerate()
                    .all(|(j, &b)| b == j as u8)
            );
        }
        // A position that is not a record start is an error, not a panic.
        assert!(reader.read_into(Lsn(expect[3].0.0 + 8), &mut rec).is_err());
        // The reader still works after an error.
        reader.read_into(expect[5].0, &mut rec).unwrap();
        assert_eq!(rec.lsn, expect[5].0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
