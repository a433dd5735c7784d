//! redo-helper: the storage side of fpw_pushdown. Plain Rust (no pgrx): it follows a
//! PostgreSQL 15 primary over physical replication, keeps its WAL and a base backup,
//! replays the WAL per resource manager, serves pages by GetPage@LSN, and repairs torn pages
//! after a crash. The design is in `docs/design.md`.
//!
//! Layers, each importing only from those before it (a test checks it):
//!
//! 1. [`wal`]: decoding PostgreSQL's WAL.
//! 2. `pgdata`: a cluster's own files (pg_control, relation paths, data pages).
//! 3. `redo`: the redo of each resource manager on 8 KB pages, masks, comparison.
//! 4. `store`: the helper's data directory: archive, base pages, images, page index,
//!    GetPage, retention, ingest, bulk replay, verify, check and repair.
//! 5. `imagegen`, `stream`, `serve`: image generation, the replication connection, the
//!    HTTP API with the status and metrics (`serve` may use `imagegen`).
//! 6. [`cmd`]: one module per subcommand; all printing is there.
//!
//! Modules are private to the crate; what the binary and the integration tests use is
//! re-exported here.

pub mod cmd;
mod imagegen;
mod pgdata;
mod redo;
mod serve;
mod store;
mod stream;
mod sync;
pub mod wal;

pub use pgdata::control_file::ControlFile;
pub use redo::page::{Page, PageLayout, checksum_page};
pub use stream::conninfo::ConnInfo;
