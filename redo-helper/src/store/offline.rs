//! A bootstrapped data directory opened without streaming (`check`, `repair`), and the
//! steps of opening a store that `run` shares: the archive, the page store, the retention
//! state, the index rebuilt from the archive.

use super::StoreError;
use super::archive::WalArchive;
use super::base::BaseFiles;
use super::images::ImageStore;
use super::ingest::{Ingest, rebuild};
use super::lock::DataDirLock;
use super::meta::HelperMeta;
use super::page_store::PageStore;
use super::retention::RetentionState;
use crate::sync::{read, write};
use crate::wal::page::Lsn;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A bootstrapped data directory opened without streaming: the page store with its index
/// rebuilt from the archive (for offline checks such as `redo-helper check`). Holds the
/// directory's lock, so it cannot run beside `redo-helper run`.
pub(crate) struct OfflineStore {
    pub meta: HelperMeta,
    pub store: Arc<PageStore>,
    archive: WalArchive,
    ingest: Ingest,
    _lock: DataDirLock,
}

/// What [`OfflineStore::catch_up_from_pg_wal`] took from the cluster's `pg_wal`.
#[derive(Debug, Clone, Default)]
pub(crate) struct WalCatchUp {
    /// The archive's flush position before.
    pub from: Lsn,
    /// End of the last valid record in `pg_wal` (where crash recovery will stop too).
    pub end: Lsn,
    /// Records decoded past the archive's flush position.
    pub records: u64,
    /// Why reading stopped: the first invalid or missing record after the last valid one.
    pub stopped: String,
}

impl OfflineStore {
    pub(crate) fn open(data_dir: &Path) -> Result<OfflineStore, StoreError> {
        Self::open_locked(data_dir, DataDirLock::acquire(data_dir)?)
    }

    /// Opens the directory whose lock the caller took.
    pub(crate) fn open_locked(
        data_dir: &Path,
        lock: DataDirLock,
    ) -> Result<OfflineStore, StoreError> {
        let meta = HelperMeta::load(data_dir)?.ok_or_else(|| StoreError::DataDir {
            dir: data_dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a bootstrapped helper data directory (no helper.json)",
            ),
        })?;
        let archive = open_archive(data_dir, &meta)?;
        let store = open_store(data_dir, &meta, &archive, 0)?;
        let from = load_retention(data_dir, &meta, &store)?;
        let mut ingest = Ingest::new(&meta, Arc::clone(&store))?;
        rebuild(&archive, &mut ingest, from, |_, _| {})?;
        note_generated_images(&store);
        Ok(OfflineStore {
            meta,
            store,
            archive,
            ingest,
            _lock: lock,
        })
    }

    /// Takes into the archive and the index the WAL a stopped (or crashed) cluster has in
    /// `pg_wal` beyond what the helper had acknowledged: streaming lags the server's flush by
    /// up to a flush interval, and a helper that was down lags by more (the slot kept that
    /// WAL). Reads records from the last complete one the helper has, as crash recovery
    /// would, until the first invalid or missing one; appends exactly the bytes up to the end
    /// of the last valid record, so a helper started afterwards streams on from there.
    pub(crate) fn catch_up_from_pg_wal(&mut self, pg_wal: &Path) -> Result<WalCatchUp, StoreError> {
        use crate::wal::reader::{FileReaderOptions, WalFileReader};
        let flushed = self.archive.flush_position();
        let mut out = WalCatchUp {
            from: flushed,
            end: flushed,
            ..Default::default()
        };
        // A record boundary at or before the flush position: the start of the record the
        // decoder is assembling, else the end of the last one, MAXALIGNed (where PostgreSQL
        // puts the next record, its header split across pages if need be).
        let start = Lsn((self.ingest.decoder.next_record_lsn().0 + 7) & !7);
        let opts = FileReaderOptions {
            timeline: Some(self.meta.timeline),
            system_identifier: Some(self.meta.system_identifier),
            version: Some(self.meta.pg_version),
            ..Default::default()
        };
        let mut reader = match WalFileReader::open(pg_wal, start, opts) {
            Ok(r) => r,
            // No segment for the next record (WAL ended at a segment boundary): nothing new.
            Err(e) if e.is_end_of_wal() => {
                out.stopped = e.to_string();
                return Ok(out);
            }
            Err(source) => return Err(StoreError::Decode { lsn: start, source }),
        };
        if reader.segment_size() != self.meta.segment_size {
            return Err(StoreError::DataDir {
                dir: pg_wal.to_path_buf(),
                source: std::io::Error::other(format!(
                    "WAL segment size {} differs from the helper's {}",
                    reader.segment_size(),
                    self.meta.segment_size
                )),
            });
        }
        let mut rec = crate::wal::DecodedRecord::default();
        let mut end = Lsn(0);
        loop {
            match reader.next_record_into(&mut rec) {
                Ok(true) => {
                    end = rec.lsn.add(rec.total_len() as u64);
                    if end > flushed {
                        out.records += 1;
                    }
                }
                Ok(false) => {
                    out.stopped = "end of the segment files".into();
                    break;
                }
                Err(e) => {
                    out.stopped = e.to_string();
                    break;
                }
            }
        }
        if end < flushed && end.0 != 0 {
            // The helper has durably received WAL this pg_wal does not have: a different
            // history (restored from a backup, or another cluster's directory).
            return Err(StoreError::DataDir {
                dir: pg_wal.to_path_buf(),
                source: std::io::Error::other(format!(
                    "its WAL ends at {end}, before the {flushed} the helper already has \
                     ({}); it is not the WAL of the cluster the helper follows",
                    out.stopped
                )),
            });
        }
        if end <= flushed {
            return Ok(out);
        }
        // In pieces: a helper that was down for long may be gigabytes behind.
        const PIECE: u64 = 16 << 20;
        let mut bytes = Vec::new();
        let mut pos = flushed;
        while pos < end {
            let to = Lsn(end.0.min(pos.0 + PIECE));
            bytes.clear();
            super::archive::read_segment_files(
                pg_wal,
                self.meta.timeline,
                self.meta.segment_size,
                pos,
                to,
                &mut bytes,
            )?;
            self.archive.write(pos, &bytes)?;
            self.archive.flush()?;
            self.ingest.push_and_index(&bytes)?;
            pos = to;
        }
        out.end = end;
        Ok(out)
    }
}

pub(crate) fn archive_start(meta: &HelperMeta) -> Lsn {
    meta.start_lsn().segment_start(meta.segment_size)
}

pub(crate) fn open_archive(data_dir: &Path, meta: &HelperMeta) -> Result<WalArchive, StoreError> {
    Ok(WalArchive::open(
        &archive_dir(data_dir),
        meta.segment_size,
        meta.timeline,
        archive_start(meta),
    )?)
}

/// Loads `retention.json` into a freshly opened store (horizon, relation events, unreadable
/// markers); returns where the index rebuild starts: the horizon's segment, or the backup
/// start's.
pub(crate) fn load_retention(
    data_dir: &Path,
    meta: &HelperMeta,
    store: &PageStore,
) -> Result<Lsn, StoreError> {
    let saved = RetentionState::load(data_dir)?;
    if let Some(state) = &saved {
        let horizon = state.apply(store);
        log::info!(
            "retention horizon {horizon}: history before it was removed ({} relation events, {} unreadable pages kept)",
            state.relation_events.truncations.len()
                + state.relation_events.drops.len()
                + state.relation_events.database_drops.len(),
            state.unreadable.len()
        );
    }
    // Damaged image entries: harmless while the WAL since the backup is all there (images
    // are a cache), fatal once retention removed history they may be the only record of.
    {
        let mut images = write(&store.images);
        if let Some(first) = images.damaged.first() {
            if store.horizon() > meta.start_lsn() {
                return Err(StoreError::ImagesDamaged {
                    count: images.damaged.len(),
                    first: first.to_string(),
                    horizon: store.horizon(),
                });
            }
            images.quarantine_damaged()?;
        }
    }
    Ok(store
        .horizon()
        .segment_start(meta.segment_size)
        .max(archive_start(meta)))
}

/// `entries_per_file` 0: the default.
pub(crate) fn open_store(
    data_dir: &Path,
    meta: &HelperMeta,
    archive: &WalArchive,
    entries_per_file: u64,
) -> Result<Arc<PageStore>, StoreError> {
    let entries_per_file = match entries_per_file {
        0 => super::images::DEFAULT_ENTRIES_PER_FILE,
        n => n,
    };
    let images = ImageStore::open_with(&data_dir.join("images"), entries_per_file)?;
    // `run` recorded its shard map before it first opened the store (`shard.json`).
    let shard_map = super::shard::ShardMap::load(data_dir).map_err(|e| StoreError::DataDir {
        dir: data_dir.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(Arc::new(
        PageStore::new(
            BaseFiles::new(data_dir.join("base")),
            images,
            archive,
            meta.system_identifier,
            meta.pg_version,
            (meta.start_lsn(), meta.end_lsn()),
            crate::redo::RedoEngine {
                ctx: meta.redo_context(),
            },
        )
        .with_shard_map(shard_map),
    ))
}

/// Images generated before a restart count again (the index was rebuilt without them).
pub(crate) fn note_generated_images(store: &PageStore) {
    let img = read(&store.images);
    let mut idx = write(&store.index);
    let keys: Vec<_> = idx.keys().copied().collect();
    for key in keys {
        if let (Some(lsn), Some(h)) = (
            img.newest_at_or_before(&key, Lsn(u64::MAX)),
            idx.page_mut(&key),
        ) {
            h.note_generated_image(lsn);
        }
    }
}

/// Where the WAL archive of a data directory lives.
pub(crate) fn archive_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}
