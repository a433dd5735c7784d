//! `helper.json`: which cluster this data directory follows, and where its bootstrap stands.

use super::write_atomic;
use crate::wal::page::Lsn;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HelperMeta {
    pub system_identifier: u64,
    pub timeline: u32,
    pub segment_size: u32,
    pub slot: String,
    /// BASE_BACKUP start: WAL is archived and decoded from here.
    pub backup_start_lsn: String,
    /// BASE_BACKUP end: base pages are consistent once WAL up to here is ingested.
    pub backup_end_lsn: String,
    pub created_unix: u64,
    /// `data_checksums` of the cluster (SHOW at bootstrap; absent in older directories).
    #[serde(default)]
    pub data_checksums: bool,
    /// `wal_log_hints` of the cluster at bootstrap.
    #[serde(default)]
    pub wal_log_hints: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum MetaError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
}

impl HelperMeta {
    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join("helper.json")
    }

    /// None when the directory has not been bootstrapped yet.
    pub(crate) fn load(dir: &Path) -> Result<Option<HelperMeta>, MetaError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(MetaError::Io { path, source }),
        };
        let meta: HelperMeta = serde_json::from_str(&text).map_err(|e| MetaError::Damaged {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        for s in [&meta.backup_start_lsn, &meta.backup_end_lsn] {
            s.parse::<Lsn>().map_err(|e| MetaError::Damaged {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(Some(meta))
    }

    pub(crate) fn store(&self, dir: &Path) -> Result<(), MetaError> {
        let path = Self::path(dir);
        let text = serde_json::to_string_pretty(self).map_err(|e| MetaError::Damaged {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, text.as_bytes()).map_err(|source| MetaError::Io { path, source })
    }

    pub(crate) fn start_lsn(&self) -> Lsn {
        self.backup_start_lsn.parse().unwrap_or_default()
    }

    pub(crate) fn end_lsn(&self) -> Lsn {
        self.backup_end_lsn.parse().unwrap_or_default()
    }

    /// The settings of the compute that change what redo does.
    pub(crate) fn redo_context(&self) -> crate::redo::RedoContext {
        crate::redo::RedoContext {
            data_checksums: self.data_checksums,
            wal_log_hints: self.wal_log_hints,
        }
    }
}
