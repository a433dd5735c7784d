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
    /// PostgreSQL major version of the cluster (`server_version_num` at bootstrap; written
    /// as its major number; absent in directories bootstrapped before 16..18 were
    /// supported, which followed 15).
    #[serde(default)]
    pub pg_version: crate::wal::PgVersion,
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
        Self::parse(&text, &path).map(Some)
    }

    /// `helper.json`'s text, checked (`path` names it in errors).
    pub(crate) fn parse(text: &str, path: &Path) -> Result<HelperMeta, MetaError> {
        let path = path.to_path_buf();
        let meta: HelperMeta = serde_json::from_str(text).map_err(|e| MetaError::Damaged {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let damaged = |reason: String| MetaError::Damaged {
            path: path.clone(),
            reason,
        };
        let mut bounds = [Lsn(0); 2];
        for (i, s) in [&meta.backup_start_lsn, &meta.backup_end_lsn]
            .into_iter()
            .enumerate()
        {
            bounds[i] = s.parse::<Lsn>().map_err(|e| damaged(e.to_string()))?;
        }
        // Every LSN computation divides by the segment size: refuse what PostgreSQL could
        // not have written (IsValidWalSegSize) instead of failing later, or panicking.
        if !crate::wal::page::is_valid_segment_size(meta.segment_size) {
            return Err(damaged(format!(
                "segment_size {} is not a WAL segment size (a power of two from 1 MB to 1 GB)",
                meta.segment_size
            )));
        }
        if meta.timeline == 0 {
            return Err(damaged("timeline 0".into()));
        }
        if bounds[1] < bounds[0] {
            return Err(damaged(format!(
                "backup_end_lsn {} before backup_start_lsn {}",
                bounds[1], bounds[0]
            )));
        }
        Ok(meta)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid `helper.json` (also the object store's tests' fixture).
    pub(crate) fn meta() -> HelperMeta {
        HelperMeta {
            system_identifier: 7,
            timeline: 1,
            segment_size: 16 << 20,
            slot: "s".into(),
            backup_start_lsn: "0/2000028".into(),
            backup_end_lsn: "0/2000100".into(),
            created_unix: 0,
            data_checksums: true,
            wal_log_hints: false,
            pg_version: crate::wal::PgVersion::V17,
        }
    }

    #[test]
    fn impossible_values_are_damage_not_panics() {
        let dir = std::env::temp_dir().join(format!("rh_meta_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        meta().store(&dir).unwrap();
        assert_eq!(HelperMeta::load(&dir).unwrap(), Some(meta()));
        for (m, what) in [
            (
                HelperMeta {
                    segment_size: 0,
                    ..meta()
                },
                "segment_size 0",
            ),
            (
                HelperMeta {
                    segment_size: 3 << 20,
                    ..meta()
                },
                "segment_size 3145728",
            ),
            (
                HelperMeta {
                    timeline: 0,
                    ..meta()
                },
                "timeline 0",
            ),
            (
                HelperMeta {
                    backup_end_lsn: "0/1000000".into(),
                    ..meta()
                },
                "before backup_start_lsn",
            ),
        ] {
            m.store(&dir).unwrap();
            let err = HelperMeta::load(&dir).unwrap_err().to_string();
            assert!(err.contains("is damaged") && err.contains(what), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
