//! The redo-helper integration tests, built as one test binary (`cargo test -p redo-helper
//! --test it`; one area: `--test it repair::`). Each module is one area; `common` runs
//! throwaway PostgreSQL 15 clusters and `support` runs the `redo-helper` binary against them.
//!
//! All modules' tests run as threads of this one process, in parallel: anything shared
//! (temporary directory names, ports, the WAL fixture) comes from `common`, which keeps it
//! unique per process; no test changes the environment, the working directory or other
//! process-global state.

mod common;
mod seaweed;
mod support;

mod brin;
mod cache;
mod checksum;
mod conn_security;
mod corruption;
mod dbase;
mod faults;
mod fuzz_wal;
mod generic_wal;
mod gin;
mod gist;
mod hash;
mod hosts;
mod ingest;
mod netns;
mod object_store;
mod observability;
mod redo_verify;
mod remote_repair;
mod repair;
mod retention;
mod routing;
mod security;
mod serve_pages;
mod service;
mod shards;
mod spgist;
mod versions;
mod waldump_parity;
