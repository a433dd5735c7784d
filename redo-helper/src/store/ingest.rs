//! Ingest: WAL that is durable in the archive decoded into the page index, and the index
//! rebuilt from the archive at start-up. The index never holds a record the archive does not
//! durably have, so a restart rebuilds exactly what was served before.

use super::StoreError;
use super::archive::WalArchive;
use super::meta::HelperMeta;
use super::page_store::PageStore;
use crate::sync::{read, write};
use crate::wal::block::PageKey;
use crate::wal::page::Lsn;
use crate::wal::reader::{DecoderConfig, WalStreamDecoder};
use crate::wal::record::DecodedRecord;
use std::sync::Arc;
use std::time::Instant;

/// The decoder feeding the page index, only with durable (fsynced) WAL.
pub(crate) struct Ingest {
    pub(crate) decoder: WalStreamDecoder,
    pub store: Arc<PageStore>,
    /// Records before this are not indexed: before the backup start they are in the base
    /// pages, before the retention horizon in the retained images and state.
    index_from: Lsn,
    pub backup_end: Lsn,
    record: DecodedRecord,
    touched: Vec<PageKey>,
}

impl Ingest {
    /// A decoder from the segment of `store`'s horizon (the backup start, or the retention
    /// horizon once one is set).
    pub(crate) fn new(meta: &HelperMeta, store: Arc<PageStore>) -> Result<Ingest, StoreError> {
        let index_from = store.horizon();
        let start = index_from.segment_start(meta.segment_size);
        let cfg = DecoderConfig {
            segment_size: meta.segment_size,
            system_identifier: Some(meta.system_identifier),
            timeline: Some(meta.timeline),
            version: Some(meta.pg_version),
        };
        let decoder = WalStreamDecoder::new(start, cfg)
            .map_err(|source| StoreError::Decode { lsn: start, source })?;
        Ok(Ingest {
            decoder,
            store,
            index_from,
            backup_end: meta.end_lsn(),
            record: DecodedRecord::default(),
            touched: Vec::new(),
        })
    }

    pub(crate) fn decoded_end(&self) -> Lsn {
        read(&self.store.index).last_record_end
    }

    /// Decodes every complete record in the bytes pushed so far and indexes it; returns the
    /// pages the records touched (sorted, each once), for image generation to consider.
    pub(crate) fn push_and_index(&mut self, durable: &[u8]) -> Result<&[PageKey], StoreError> {
        self.store
            .recent_wal
            .push(self.decoder.input_lsn(), durable);
        self.decoder.push(durable);
        self.touched.clear();
        let result = {
            loop {
                match self.decoder.next_record_into(&mut self.record) {
                    Ok(true) => {
                        // Records before the backup's start are already in the base pages,
                        // those before the retention horizon in the retained images. The
                        // index is locked per record (decoding happens outside), so page
                        // reads never wait for a whole flushed chunk to be indexed.
                        if self.record.lsn >= self.index_from {
                            write(&self.store.index)
                                .add_record_touching(&self.record, &mut self.touched);
                        }
                    }
                    Ok(false) => break Ok(()),
                    Err(source) => {
                        break Err(StoreError::Decode {
                            lsn: self.decoder.next_record_lsn(),
                            source,
                        });
                    }
                }
            }
        };
        result?;
        self.touched.sort_unstable();
        self.touched.dedup();
        Ok(&self.touched)
    }
}

/// Rebuilds the index from the archive (start of the backup's or the retention horizon's
/// segment up to the flush point); `on_indexed` gets the pages each piece touched.
pub(crate) fn rebuild(
    archive: &WalArchive,
    ingest: &mut Ingest,
    from: Lsn,
    mut on_indexed: impl FnMut(&PageStore, &[PageKey]),
) -> Result<(), StoreError> {
    const CHUNK: u64 = 4 << 20;
    let end = archive.flush_position();
    let started = Instant::now();
    let mut pos = from;
    let mut buf = Vec::with_capacity(CHUNK as usize);
    while pos < end {
        let to = Lsn(end.0.min(pos.0 + CHUNK));
        buf.clear();
        archive.read(pos, to, &mut buf)?;
        let store = Arc::clone(&ingest.store);
        on_indexed(&store, ingest.push_and_index(&buf)?);
        pos = to;
    }
    if end > from {
        log::info!(
            "rebuilt page index from the archive ({from}..{end}): {} records, {} pages in {:.1}s",
            read(&ingest.store.index).records,
            read(&ingest.store.index).pages(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
