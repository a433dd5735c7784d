//! Bootstrap from `BASE_BACKUP` (PostgreSQL 15 protocol): one result set with the start
//! position, one with the tablespaces, then a single COPY OUT whose CopyData messages carry
//! a type byte — 'n' new archive (name, tablespace location), 'd' archive data, 'p' progress,
//! 'm' manifest — and a final result set with the end position. The legacy one-COPY-per-
//! tablespace format was removed in 15. Relation files from the tar archives are written to
//! the page store's base directory; everything else in the backup is skipped.

use super::connection::{BackendMessage, ConnectionError, PgConnection, decode_data_row};
use crate::pgdata::relpath::RelationFileName;
use crate::store::base::BaseFiles;
use crate::wal::page::Lsn;
use bytes::Bytes;
use postgres_protocol::message::backend::Message;
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Default tablespace (`pg_default`) and shared catalog tablespace (`pg_global`) OIDs.
pub(crate) const DEFAULTTABLESPACE_OID: u32 = 1663;
pub(crate) const GLOBALTABLESPACE_OID: u32 = 1664;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BaseBackupError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("base backup protocol: {0}")]
    Protocol(String),
    #[error("writing base backup file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("reading tar archive {archive}: {source}")]
    Tar { archive: String, source: io::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BaseBackupResult {
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
    pub timeline: u32,
    pub relation_files: u64,
    pub bytes: u64,
}

/// Feeds a blocking tar reader from async CopyData chunks.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.chunk = c,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        let _ = self.chunk.split_to(n);
        Ok(n)
    }
}

/// Which tablespace an archive holds: "base.tar" is the data directory; "<oid>.tar" a
/// user tablespace.
fn archive_tablespace(name: &str) -> Option<u32> {
    if name == "base.tar" {
        return Some(DEFAULTTABLESPACE_OID);
    }
    name.strip_suffix(".tar").and_then(|oid| oid.parse().ok())
}

/// Maps a path inside an archive to (tablespace, database, relation file), or None for
/// files that are not relation data.
fn relation_of(archive_spc: u32, path: &str) -> Option<(u32, u32, RelationFileName)> {
    let parts: Vec<&str> = path.trim_start_matches("./").split('/').collect();
    match (archive_spc, parts.as_slice()) {
        (DEFAULTTABLESPACE_OID, ["base", db, file]) => Some((
            DEFAULTTABLESPACE_OID,
            db.parse().ok()?,
            RelationFileName::parse(file)?,
        )),
        (DEFAULTTABLESPACE_OID, ["global", file]) => {
            Some((GLOBALTABLESPACE_OID, 0, RelationFileName::parse(file)?))
        }
        // User tablespace: PG_15_<catversion>/<db>/<file>
        (spc, [version_dir, db, file])
            if spc != DEFAULTTABLESPACE_OID && version_dir.starts_with("PG_") =>
        {
            Some((spc, db.parse().ok()?, RelationFileName::parse(file)?))
        }
        _ => None,
    }
}

/// Extracts the relation files of one archive into the base store (runs on a blocking thread).
fn extract_archive(
    name: String,
    spc: u32,
    reader: impl Read,
    base: BaseFiles,
) -> Result<(u64, u64), BaseBackupError> {
    let mut archive = tar::Archive::new(reader);
    let tar_err = |source| BaseBackupError::Tar {
        archive: name.clone(),
        source,
    };
    let (mut files, mut bytes) = (0u64, 0u64);
    // Raw entries: the tar crate would read a GNU long-name or PAX member whole into memory
    // (its size is the sender's word, up to gigabytes). PostgreSQL's tar writer never emits
    // them (`tarCreateHeader` refuses names over 99 bytes), so one is refused by name
    // instead; regular members are streamed to disk.
    for entry in archive.entries().map_err(tar_err)?.raw(true) {
        let mut entry = entry.map_err(tar_err)?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions()
        {
            return Err(tar_err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "unexpected {:?} member of {} bytes (PostgreSQL's base backup never writes one)",
                    kind,
                    entry.size()
                ),
            )));
        }
        if !kind.is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(tar_err)?
            .to_string_lossy()
            .into_owned();
        let Some((spc_oid, db_oid, file)) = relation_of(spc, &path) else {
            continue;
        };
        let dest = base.relation_path(spc_oid, db_oid, &file);
        let n = base
            .write_file(&dest, &mut entry)
            .map_err(|source| BaseBackupError::Write {
                path: dest.clone(),
                source,
            })?;
        files += 1;
        bytes += n;
    }
    Ok((files, bytes))
}

/// Reports progress on a terminal with a bar, otherwise in the log every few seconds.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    last_log: Instant,
}

impl Progress {
    fn new(total: u64) -> Progress {
        use std::io::IsTerminal;
        let bar = io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total.max(1));
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "base backup {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                b.set_style(style);
            }
            b
        });
        Progress {
            bar,
            total,
            last_log: Instant::now(),
        }
    }

    fn update(&mut self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        } else if self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            let pct = if self.total > 0 {
                done as f64 * 100.0 / self.total as f64
            } else {
                0.0
            };
            log::info!(
                "base backup: {} MB of ~{} MB ({pct:.0}%)",
                done >> 20,
                self.total >> 20
            );
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn parse_position(row: Option<&Vec<Option<String>>>) -> Option<(Lsn, u32)> {
    let row = row?;
    let lsn = row.first()?.as_deref()?.parse().ok()?;
    let tli = row.get(1)?.as_deref()?.parse().ok()?;
    Some((lsn, tli))
}

/// Runs BASE_BACKUP on `conn` (a replication connection) and writes relation files to `base`.
pub(crate) async fn run_base_backup(
    conn: &mut PgConnection,
    base: &BaseFiles,
    label: &str,
) -> Result<BaseBackupResult, BaseBackupError> {
    let sql = format!(
        "BASE_BACKUP (LABEL '{}', PROGRESS, CHECKPOINT 'fast', WAIT true, WAL false, MANIFEST 'no')",
        label.replace('\'', "''")
    );
    conn.send_query(&sql).await?;

    let mut result_sets: Vec<Vec<Vec<Option<String>>>> = Vec::new();
    let mut current: Option<Vec<Vec<Option<String>>>> = None;
    let mut in_copy = false;
    let mut progress: Option<Progress> = None;
    let mut sender: Option<mpsc::Sender<Bytes>> = None;
    let mut extractors = Vec::new();
    let mut error: Option<ConnectionError> = None;

    loop {
        let msg = match conn.read_message().await? {
            BackendMessage::Message(m) => m,
            BackendMessage::CopyBothResponse => {
                return Err(BaseBackupError::Protocol(
                    "unexpected CopyBothResponse".into(),
                ));
            }
        };
        match msg {
            Message::RowDescription(_) => current = Some(Vec::new()),
            Message::DataRow(body) => {
                let row = decode_data_row(&body)
                    .map_err(|e| BaseBackupError::Protocol(format!("bad DataRow: {e}")))?;
                current.get_or_insert_with(Vec::new).push(row);
            }
            Message::CommandComplete(_) => {
                if let Some(set) = current.take() {
                    result_sets.push(set);
                }
            }
            Message::CopyOutResponse(_) => {
                in_copy = true;
                // Second result set: tablespaces with sizes in kB (PROGRESS).
                let total_kb: u64 = result_sets
                    .get(1)
                    .map(|rows| {
                        rows.iter()
                            .filter_map(|r| r.get(2).cloned().flatten()?.parse::<u64>().ok())
                            .sum()
                    })
                    .unwrap_or(0);
                progress = Some(Progress::new(total_kb * 1024));
            }
            Message::CopyData(body) if in_copy => {
                let data = body.into_bytes();
                match data.first() {
                    Some(b'n') => {
                        // New archive: name\0 location\0
                        let fields: Vec<&[u8]> = data[1..].split(|b| *b == 0).collect();
                        let name = fields
                            .first()
                            .map(|f| String::from_utf8_lossy(f).into_owned())
                            .unwrap_or_default();
                        let spc = archive_tablespace(&name).ok_or_else(|| {
                            BaseBackupError::Protocol(format!("unexpected archive name {name:?}"))
                        })?;
                        log::info!("base backup: receiving archive {name}");
                        let (tx, rx) = mpsc::channel::<Bytes>(64);
                        sender = Some(tx); // dropping the previous sender ends that archive
                        let base = base.clone();
                        let reader = ChannelReader {
                            rx,
                            chunk: Bytes::new(),
                        };
                        extractors.push(tokio::task::spawn_blocking(move || {
                            extract_archive(name, spc, reader, base)
                        }));
                    }
                    Some(b'd') => {
                        let Some(tx) = &sender else {
                            return Err(BaseBackupError::Protocol(
                                "archive data before any archive started".into(),
                            ));
                        };
                        if tx.send(data.slice(1..)).await.is_err() {
                            // The extractor stopped early: its error is reported below.
                            sender = None;
                        }
                    }
                    Some(b'p') => {
                        if let (Some(p), Some(b)) = (progress.as_mut(), data.get(1..9)) {
                            p.update(u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
                        }
                    }
                    Some(b'm') => sender = None, // manifest (not requested); ignore its data
                    _ => {
                        return Err(BaseBackupError::Protocol(
                            "unknown CopyData type in base backup".into(),
                        ));
                    }
                }
            }
            Message::CopyDone => {
                in_copy = false;
                sender = None;
            }
            Message::ErrorResponse(body) => error = Some(conn.server_error(&body)),
            Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
            Message::ReadyForQuery(_) => break,
            _ => {
                return Err(BaseBackupError::Protocol(
                    "unexpected message during BASE_BACKUP".into(),
                ));
            }
        }
    }
    drop(sender);
    if let Some(p) = &progress {
        p.finish();
    }
    let (mut files, mut bytes) = (0, 0);
    for handle in extractors {
        let (f, b) = handle
            .await
            .map_err(|e| BaseBackupError::Protocol(format!("extractor thread failed: {e}")))??;
        files += f;
        bytes += b;
    }
    if let Some(e) = error {
        return Err(e.into());
    }
    let start = parse_position(result_sets.first().and_then(|s| s.first()));
    let end = parse_position(result_sets.last().and_then(|s| s.first()));
    match (start, end, result_sets.len()) {
        (Some((start_lsn, timeline)), Some((end_lsn, _)), 3..) => {
            base.sync_all().map_err(|source| BaseBackupError::Write {
                path: base.root().to_path_buf(),
                source,
            })?;
            Ok(BaseBackupResult {
                start_lsn,
                end_lsn,
                timeline,
                relation_files: files,
                bytes,
            })
        }
        _ => Err(BaseBackupError::Protocol(format!(
            "expected start and end positions, got {} result sets",
            result_sets.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_archive_paths_to_relations() {
        let (spc, db, f) = relation_of(DEFAULTTABLESPACE_OID, "base/5/16384_vm.1").unwrap();
        assert_eq!(
            (spc, db, f.rel_number, f.fork.0, f.segment),
            (1663, 5, 16384, 2, 1)
        );
        let (spc, db, f) = relation_of(DEFAULTTABLESPACE_OID, "global/1262").unwrap();
        assert_eq!((spc, db, f.rel_number), (1664, 0, 1262));
        let (spc, db, _) = relation_of(16500, "PG_15_202209061/5/16501").unwrap();
        assert_eq!((spc, db), (16500, 5));
        assert!(relation_of(DEFAULTTABLESPACE_OID, "global/pg_control").is_none());
        assert!(relation_of(DEFAULTTABLESPACE_OID, "base/5/pg_filenode.map").is_none());
        assert!(relation_of(DEFAULTTABLESPACE_OID, "postgresql.conf").is_none());
        assert_eq!(archive_tablespace("base.tar"), Some(1663));
        assert_eq!(archive_tablespace("16500.tar"), Some(16500));
        assert_eq!(archive_tablespace("x.tar"), None);
    }

    /// A tar archive: one regular file under `path` holding `data`.
    fn archive_with(path: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn relation_files_are_extracted_and_long_names_refused() {
        let dir = std::env::temp_dir().join(format!("rh_bb_{}", std::process::id()));
        let base = BaseFiles::new(dir.clone());
        let page = vec![7u8; 8192];
        let tar = archive_with("base/5/16384", &page);
        let (files, bytes) =
            extract_archive("base.tar".into(), 1663, &tar[..], base.clone()).unwrap();
        assert_eq!((files, bytes), (1, 8192));
        // A name over 100 bytes makes tar::Builder write a GNU long-name member first, which
        // PostgreSQL never sends: refused, not read into memory.
        let long = format!("base/5/{}", "1".repeat(150));
        let tar = archive_with(&long, &page);
        let err = extract_archive("base.tar".into(), 1663, &tar[..], base)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("GNULongName") && err.contains("never writes"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
