//! PostgreSQL major versions the helper follows, and how each is recognised.
//!
//! A major version fixes the WAL format (`XLOG_PAGE_MAGIC` in `access/xlog_internal.h`, bumped
//! whenever a record layout changes), the `pg_control` layout (`PG_CONTROL_VERSION` in
//! `catalog/pg_control.h`) and the record layouts of every resource manager. Minor releases
//! never change any of them. Three independent sources name the version, and each is checked
//! where it is met:
//! - the server: the ParameterStatus messages of connection start-up (`server_version`, and
//!   `server_version_num` where the server reports it), checked before a replication slot is
//!   created;
//! - the WAL: every page header's `xlp_magic` (the decoder learns the version from the first
//!   page it reads and refuses pages of another version);
//! - `pg_control`: `pg_control_version` (1300 for 13..16, 1700 for 17, 1800 for 18).
//!
//! The layouts that differ are kept side by side per resource manager in
//! [`super::rmgr`], each choosing by the [`PgVersion`] the decoder stamped on the record.

use std::fmt;

/// A PostgreSQL major version whose WAL the helper can decode and replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PgVersion {
    /// PostgreSQL 15 (`XLOG_PAGE_MAGIC` 0xD110).
    #[default]
    V15,
    /// PostgreSQL 16 (0xD113): `isCatalogRel` in the records that cause recovery conflicts,
    /// deduplicated freeze plans, gist/hash delete offsets in the main data.
    V16,
    /// PostgreSQL 17 (0xD116): heap2 prune/vacuum/freeze merged into one prune record with
    /// sub-records, `XLOG_CHECKPOINT_REDO`, `wal_level` in `CheckPoint`, 64-bit SLRU pages.
    V17,
    /// PostgreSQL 18 (0xD118): 64-bit pgstat object ids in commit/abort records,
    /// `default_char_signedness` in `pg_control`.
    V18,
}

/// Why a version could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error(
        "PostgreSQL server version {found} is not supported (the helper follows PostgreSQL 15, 16, 17 and 18)"
    )]
    UnsupportedServer { found: String },
    #[error("the server did not report its version at connection start-up")]
    ServerVersionMissing,
    #[error(
        "pg_control_version {found} is not one the helper knows (1300 for PostgreSQL 15 and 16, 1700 for 17, 1800 for 18)"
    )]
    UnsupportedControlVersion { found: u32 },
}

impl PgVersion {
    /// Every supported version, oldest first.
    pub const ALL: [PgVersion; 4] = [
        PgVersion::V15,
        PgVersion::V16,
        PgVersion::V17,
        PgVersion::V18,
    ];

    /// The major version number (15..18).
    pub fn major(self) -> u32 {
        match self {
            PgVersion::V15 => 15,
            PgVersion::V16 => 16,
            PgVersion::V17 => 17,
            PgVersion::V18 => 18,
        }
    }

    /// `TABLESPACE_VERSION_DIRECTORY` ("PG_" major "_" `CATALOG_VERSION_NO`,
    /// catalog/catversion.h of the released major): the directory of a tablespace holding
    /// this version's databases, in the relation paths pg_waldump prints.
    pub fn tablespace_version_directory(self) -> &'static str {
        match self {
            PgVersion::V15 => "PG_15_202209061",
            PgVersion::V16 => "PG_16_202307071",
            PgVersion::V17 => "PG_17_202406281",
            PgVersion::V18 => "PG_18_202506291",
        }
    }

    /// The version of a major number, if supported.
    pub fn from_major(major: u32) -> Option<PgVersion> {
        PgVersion::ALL.into_iter().find(|v| v.major() == major)
    }

    /// `XLOG_PAGE_MAGIC` of this version's WAL.
    pub fn page_magic(self) -> u16 {
        match self {
            PgVersion::V15 => 0xD110,
            PgVersion::V16 => 0xD113,
            PgVersion::V17 => 0xD116,
            PgVersion::V18 => 0xD118,
        }
    }

    /// The version whose WAL pages carry `magic`.
    pub fn from_page_magic(magic: u16) -> Option<PgVersion> {
        PgVersion::ALL.into_iter().find(|v| v.page_magic() == magic)
    }

    /// `PG_CONTROL_VERSION`: 1300 from 13 to 16 (16 changed nothing in `pg_control`).
    pub fn control_version(self) -> u32 {
        match self {
            PgVersion::V15 | PgVersion::V16 => 1300,
            PgVersion::V17 => 1700,
            PgVersion::V18 => 1800,
        }
    }

    /// The control-file layout family of `pg_control_version`. 1300 is 15's layout (and
    /// 16's, identical); which of the two it is cannot be told from `pg_control` alone.
    pub fn from_control_version(version: u32) -> Result<PgVersion, VersionError> {
        match version {
            1300 => Ok(PgVersion::V15),
            1700 => Ok(PgVersion::V17),
            1800 => Ok(PgVersion::V18),
            found => Err(VersionError::UnsupportedControlVersion { found }),
        }
    }

    /// The version of a server from its `server_version_num` (e.g. "170010").
    pub fn from_server_version_num(text: &str) -> Result<PgVersion, VersionError> {
        let unsupported = || VersionError::UnsupportedServer {
            found: text.to_string(),
        };
        let num: u32 = text.trim().parse().map_err(|_| unsupported())?;
        PgVersion::from_major(num / 10000).ok_or_else(unsupported)
    }

    /// The version of a server from its `server_version` text (e.g. "17.10",
    /// "15.14 (Debian 15.14-0+deb12u1)", "18beta1"): the leading number is the major.
    pub fn from_server_version(text: &str) -> Result<PgVersion, VersionError> {
        let digits: String = text
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits
            .parse()
            .ok()
            .and_then(PgVersion::from_major)
            .ok_or_else(|| VersionError::UnsupportedServer {
                found: text.to_string(),
            })
    }

    /// 16 and later: `isCatalogRel` fields and the `snapshotConflictHorizon` naming.
    pub fn has_catalog_rel_flags(self) -> bool {
        self >= PgVersion::V16
    }

    /// 18 and later: `xl_heap_inplace` carries the invalidations the update sends
    /// (`dbId`, `tsId`, `relcacheInitFileInval`, `nmsgs`, `msgs[]` after `offnum`).
    pub fn has_inplace_invalidations(self) -> bool {
        self >= PgVersion::V18
    }

    /// 17 and later: one `XLOG_HEAP2_PRUNE_*` record for pruning, vacuuming and freezing.
    pub fn has_merged_prune_freeze(self) -> bool {
        self >= PgVersion::V17
    }
}

impl fmt::Display for PgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL {}", self.major())
    }
}

impl serde::Serialize for PgVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.major())
    }
}

impl<'de> serde::Deserialize<'de> for PgVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let major = u32::deserialize(d)?;
        PgVersion::from_major(major).ok_or_else(|| {
            serde::de::Error::custom(format!("unsupported PostgreSQL major version {major}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_control_and_server_numbers() {
        for v in PgVersion::ALL {
            assert_eq!(PgVersion::from_page_magic(v.page_magic()), Some(v));
            assert_eq!(PgVersion::from_major(v.major()), Some(v));
        }
        assert_eq!(PgVersion::from_page_magic(0xD10D), None);
        assert_eq!(
            PgVersion::from_server_version_num("170010"),
            Ok(PgVersion::V17)
        );
        assert_eq!(
            PgVersion::from_server_version_num("150014"),
            Ok(PgVersion::V15)
        );
        assert!(PgVersion::from_server_version_num("140011").is_err());
        assert!(PgVersion::from_server_version_num("190000").is_err());
        assert!(PgVersion::from_server_version_num("x").is_err());
        assert_eq!(PgVersion::from_server_version("17.10"), Ok(PgVersion::V17));
        assert_eq!(
            PgVersion::from_server_version("15.14 (Debian 15.14-0+deb12u1)"),
            Ok(PgVersion::V15)
        );
        assert_eq!(
            PgVersion::from_server_version("18beta1"),
            Ok(PgVersion::V18)
        );
        assert!(PgVersion::from_server_version("9.6.24").is_err());
        assert!(PgVersion::from_server_version("").is_err());
        assert_eq!(PgVersion::from_control_version(1700), Ok(PgVersion::V17));
        assert!(PgVersion::from_control_version(1200).is_err());
    }
}
