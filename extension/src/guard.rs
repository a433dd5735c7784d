//! The guard: is a redo helper attached to every configured slot and close enough to the
//! compute's WAL that full_page_writes may be off?
//!
//! `fpw_pushdown.slot_name` may list several slots: one per helper of a sharded deployment,
//! each shard holding its own. Every shard serves (and repairs) only its share of the pages,
//! so one missing or lagging shard leaves part of the database without page history: the
//! guard needs all of them healthy, and one unhealthy slot is enough for the autopilot.

use crate::gucs;
use crate::helper_state::HelperStatus;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

/// What the compute knows about one helper's slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotHealth {
    pub slot_name: String,
    pub exists: bool,
    pub physical: bool,
    pub active: bool,
    /// `pg_current_wal_lsn() - restart_lsn`: WAL the helper has not confirmed flushed.
    pub lag_bytes: Option<i64>,
}

/// Why the helper cannot be trusted with page images right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unhealthy {
    NoSlotConfigured,
    Missing(String),
    NotPhysical(String),
    Inactive(String),
    NoRestartLsn(String),
    Lagging {
        slot: String,
        lag: i64,
        max: i64,
    },
    /// `fpw_pushdown.helper_address` is set and the helper there is not ready.
    Helper(String),
    /// More than one of the above (several slots or helpers), in the configured order.
    Several(Vec<Unhealthy>),
}

impl Unhealthy {
    /// None for no problem, the problem itself for one, `Several` for more.
    fn from_list(mut problems: Vec<Unhealthy>) -> Option<Unhealthy> {
        match problems.len() {
            0 => None,
            1 => problems.pop(),
            _ => Some(Unhealthy::Several(problems)),
        }
    }
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unhealthy::NoSlotConfigured => write!(f, "fpw_pushdown.slot_name is empty"),
            Unhealthy::Missing(s) => write!(f, "replication slot \"{s}\" does not exist"),
            Unhealthy::NotPhysical(s) => {
                write!(f, "replication slot \"{s}\" is not a physical slot")
            }
            Unhealthy::Inactive(s) => {
                write!(
                    f,
                    "replication slot \"{s}\" is not active: no redo helper is attached"
                )
            }
            Unhealthy::NoRestartLsn(s) => {
                write!(
                    f,
                    "replication slot \"{s}\" has not reserved WAL (restart_lsn is NULL)"
                )
            }
            Unhealthy::Helper(why) => write!(f, "{why}"),
            Unhealthy::Several(all) => {
                for (i, p) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
            Unhealthy::Lagging { slot, lag, max } => write!(
                f,
                "replication slot \"{slot}\" lags by {lag} bytes, more than fpw_pushdown.max_helper_lag ({max} bytes)"
            ),
        }
    }
}

impl SlotHealth {
    /// Reads pg_replication_slots for every slot of `fpw_pushdown.slot_name`, in the listed
    /// order (needs SPI, i.e. a transaction and a database). A slot that does not exist is
    /// a row with `exists = false`.
    pub fn read_all() -> Vec<SlotHealth> {
        let names = gucs::slot_names();
        if names.is_empty() {
            return Vec::new();
        }
        let rows = Spi::connect(|client| {
            let args = [DatumWithOid::from(names.clone())];
            let table = client.select(
                "SELECT s.slot_name IS NOT NULL, s.slot_type = 'physical', s.active,
                        CASE WHEN pg_is_in_recovery() THEN NULL
                             ELSE (pg_current_wal_lsn() - s.restart_lsn)::int8 END
                   FROM unnest($1::text[]) WITH ORDINALITY AS n(name, i)
                   LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = n.name
                  ORDER BY n.i",
                None,
                &args,
            )?;
            let mut rows = Vec::with_capacity(names.len());
            for row in table {
                rows.push((
                    row.get::<bool>(1)?.unwrap_or(false),
                    row.get::<bool>(2)?.unwrap_or(false),
                    row.get::<bool>(3)?.unwrap_or(false),
                    row.get::<i64>(4)?,
                ));
            }
            Ok::<_, pgrx::spi::Error>(rows)
        });
        match rows {
            Ok(rows) => names
                .into_iter()
                .zip(rows)
                .map(
                    |(slot_name, (exists, physical, active, lag_bytes))| SlotHealth {
                        slot_name,
                        exists,
                        physical,
                        active,
                        lag_bytes: if exists { lag_bytes } else { None },
                    },
                )
                .collect(),
            Err(e) => pgrx::error!("fpw_pushdown: could not read pg_replication_slots: {e}"),
        }
    }

    /// Ok when a helper holds the slot within the configured lag.
    pub fn check(&self, max_lag: i64) -> Result<(), Unhealthy> {
        let s = &self.slot_name;
        if s.is_empty() {
            return Err(Unhealthy::NoSlotConfigured);
        }
        if !self.exists {
            return Err(Unhealthy::Missing(s.clone()));
        }
        if !self.physical {
            return Err(Unhealthy::NotPhysical(s.clone()));
        }
        if !self.active {
            return Err(Unhealthy::Inactive(s.clone()));
        }
        match self.lag_bytes {
            None => Err(Unhealthy::NoRestartLsn(s.clone())),
            Some(lag) if lag > max_lag => Err(Unhealthy::Lagging {
                slot: s.clone(),
                lag,
                max: max_lag,
            }),
            Some(_) => Ok(()),
        }
    }
}

/// Ok when every slot is healthy (and at least one is configured); otherwise the problem of
/// each slot that is not, naming it.
pub fn check_slots(slots: &[SlotHealth], max_lag: i64) -> Result<(), Unhealthy> {
    if slots.is_empty() {
        return Err(Unhealthy::NoSlotConfigured);
    }
    let problems = slots
        .iter()
        .filter_map(|s| s.check(max_lag).err())
        .collect();
    Unhealthy::from_list(problems).map_or(Ok(()), Err)
}

/// Reads and judges every configured slot (SPI).
pub fn check_all_slots() -> Result<(), Unhealthy> {
    check_slots(&SlotHealth::read_all(), gucs::max_helper_lag_bytes())
}

/// When `fpw_pushdown.helper_address` is set, the helpers' own view must agree: every listed
/// helper answers /status, is streaming, and its base pages are consistent.
pub fn check_helper_status() -> Result<(), Unhealthy> {
    let problems = read_helper_statuses(std::time::Duration::from_secs(3))
        .into_iter()
        .filter_map(|(addr, status)| match status {
            Err(why) => Some(why),
            Ok(status) if !status.ready() => Some(not_ready(&addr, &status)),
            Ok(_) => None,
        })
        .collect();
    Unhealthy::from_list(problems).map_or(Ok(()), Err)
}

/// Why a helper that answered /status is not ready.
pub fn not_ready(addr: &str, status: &HelperStatus) -> Unhealthy {
    Unhealthy::Helper(format!(
        "redo helper at {addr} is {}, not streaming with consistent pages",
        status.state
    ))
}

/// The `/status` of every helper of `fpw_pushdown.helper_address` (empty when unset), in the
/// listed order, with its address; Err names why it could not be read.
pub fn read_helper_statuses(
    timeout: std::time::Duration,
) -> Vec<(String, Result<HelperStatus, Unhealthy>)> {
    crate::helper_client::helper_addresses()
        .into_iter()
        .map(|addr| {
            let status = read_helper_status(&addr, timeout);
            (addr, status)
        })
        .collect()
}

/// One helper's `/status`.
fn read_helper_status(addr: &str, timeout: std::time::Duration) -> Result<HelperStatus, Unhealthy> {
    let resp = crate::helper_client::request_to(addr, "GET", "/status", timeout)
        .map_err(Unhealthy::Helper)?;
    if resp.status != 200 {
        return Err(Unhealthy::Helper(format!(
            "redo helper at {addr} answered /status with HTTP {}",
            resp.status
        )));
    }
    HelperStatus::parse(&resp.body)
        .map_err(|e| Unhealthy::Helper(format!("redo helper at {addr}: unreadable /status: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> SlotHealth {
        SlotHealth {
            slot_name: "s".into(),
            exists: true,
            physical: true,
            active: true,
            lag_bytes: Some(10),
        }
    }

    #[test]
    fn each_failure_is_named() {
        assert_eq!(healthy().check(10), Ok(()));
        assert_eq!(
            healthy().check(9),
            Err(Unhealthy::Lagging {
                slot: "s".into(),
                lag: 10,
                max: 9
            })
        );
        assert_eq!(
            SlotHealth {
                active: false,
                ..healthy()
            }
            .check(10),
            Err(Unhealthy::Inactive("s".into()))
        );
        assert_eq!(
            SlotHealth {
                exists: false,
                ..healthy()
            }
            .check(10),
            Err(Unhealthy::Missing("s".into()))
        );
        assert_eq!(
            SlotHealth {
                physical: false,
                ..healthy()
            }
            .check(10),
            Err(Unhealthy::NotPhysical("s".into()))
        );
        assert_eq!(
            SlotHealth {
                lag_bytes: None,
                ..healthy()
            }
            .check(10),
            Err(Unhealthy::NoRestartLsn("s".into()))
        );
        assert_eq!(
            SlotHealth {
                slot_name: String::new(),
                ..healthy()
            }
            .check(10),
            Err(Unhealthy::NoSlotConfigured)
        );
        // Every configured slot must be healthy; each failing one is named, in order.
        let b = SlotHealth {
            slot_name: "b".into(),
            ..healthy()
        };
        let c_gone = SlotHealth {
            slot_name: "c".into(),
            active: false,
            ..healthy()
        };
        assert_eq!(check_slots(&[healthy(), b.clone()], 10), Ok(()));
        assert_eq!(check_slots(&[], 10), Err(Unhealthy::NoSlotConfigured));
        assert_eq!(
            check_slots(&[healthy(), c_gone.clone()], 10),
            Err(Unhealthy::Inactive("c".into()))
        );
        let both = check_slots(&[c_gone, b], 9).unwrap_err();
        assert_eq!(
            both.to_string(),
            "replication slot \"c\" is not active: no redo helper is attached; replication slot \"b\" lags by 10 bytes, more than fpw_pushdown.max_helper_lag (9 bytes)"
        );
        let msg = Unhealthy::Lagging {
            slot: "s".into(),
            lag: 10,
            max: 9,
        }
        .to_string();
        assert!(msg.contains("10 bytes") && msg.contains("9 bytes") && msg.contains("\"s\""));
    }
}
