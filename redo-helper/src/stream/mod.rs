//! Talking to the compute: the replication protocol client and the BASE_BACKUP bootstrap.

pub(crate) mod base_backup;
pub(crate) mod connection;
pub(crate) mod conninfo;
pub(crate) mod pgpass;
pub(crate) mod replication;
pub(crate) mod tls;
