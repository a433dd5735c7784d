//! Talking to the compute: the replication protocol client and the BASE_BACKUP bootstrap.

pub mod base_backup;
pub mod connection;
pub mod conninfo;
pub mod replication;
