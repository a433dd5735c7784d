//! PostgreSQL 15 to 18 WAL decoding: page headers, record assembly, block references, FPI
//! decompression and typed views of record main data.
//!
//! Entry points:
//! - [`WalStreamDecoder`]: push bytes (any chunking), pull [`DecodedRecord`]s.
//! - [`WalFileReader`]: the same over a directory of segment files.
//! - [`DecodedRecord`]: header fields, [`BlockRef`]s (with data and images), main data.
//! - [`rmgr`]: typed main data per resource manager; [`desc`]: pg_waldump-style text.

pub mod block;
pub mod desc;
pub mod error;
pub mod image;
pub mod mapped;
pub mod page;
pub mod reader;
pub mod record;
pub mod rmgr;
pub mod stats;
pub mod version;

pub use block::{BlockImageHeader, BlockRef, ForkNumber, PageKey, RelFileLocator};
pub use error::{CompressionMethod, EndOfWalReason, MainDataError, WalError};
pub use page::{BLCKSZ, Lsn, WalPageHeader, XLOG_BLCKSZ};
pub use reader::{DecoderConfig, FileReaderOptions, WalFileReader, WalStreamDecoder};
pub use record::{DecodedRecord, XLogRecord};
pub use rmgr::RmgrId;
pub use version::{PgVersion, VersionError};
