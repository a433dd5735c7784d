//! redo-helper: the storage side of fpw_pushdown.
//!
//! The crate is plain Rust (no pgrx): it decodes PostgreSQL 15 WAL (`wal`), and in later
//! stages ingests it over the replication protocol, replays it per resource manager and
//! serves pages. See `shared/design.md` and the README for the architecture.

pub mod imagegen;
pub mod redo;
pub mod serve;
pub mod service;
pub mod store;
pub mod stream;
pub mod wal;
pub mod waldump;
