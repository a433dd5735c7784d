//! The guard: is a redo helper attached to the slot and close enough to the compute's WAL
//! that full_page_writes may be off?

use crate::gucs;
use crate::helper_state::HelperStatus;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

/// What the compute knows about the helper's slot.
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
            Unhealthy::Lagging { slot, lag, max } => write!(
                f,
                "replication slot \"{slot}\" lags by {lag} bytes, more than fpw_pushdown.max_helper_lag ({max} bytes)"
            ),
        }
    }
}

impl SlotHealth {
    /// Reads pg_replication_slots (needs SPI, i.e. a transaction and a database).
    pub fn read() -> SlotHealth {
        let slot_name = gucs::slot_name();
        let row = Spi::connect(|client| {
            let args = [DatumWithOid::from(slot_name.as_str())];
            let table = client.select(
                "SELECT slot_type = 'physical', active,
                        CASE WHEN pg_is_in_recovery() THEN NULL
                             ELSE (pg_current_wal_lsn() - restart_lsn)::int8 END
                   FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                Some(1),
                &args,
            )?;
            if table.is_empty() {
                return Ok::<_, pgrx::spi::Error>(None);
            }
            let row = table.first();
            Ok(Some((
                row.get::<bool>(1)?,
                row.get::<bool>(2)?,
                row.get::<i64>(3)?,
            )))
        });
        match row {
            Ok(Some((physical, active, lag))) => SlotHealth {
                slot_name,
                exists: true,
                physical: physical.unwrap_or(false),
                active: active.unwrap_or(false),
                lag_bytes: lag,
            },
            Ok(None) => SlotHealth {
                slot_name,
                exists: false,
                physical: false,
                active: false,
                lag_bytes: None,
            },
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

/// When `fpw_pushdown.helper_address` is set, the helper's own view must agree: it answers
/// /status, is streaming, and its base pages are consistent.
pub fn check_helper_status() -> Result<(), Unhealthy> {
    match read_helper_status(std::time::Duration::from_secs(3)) {
        None => Ok(()),
        Some(Err(why)) => Err(why),
        Some(Ok((addr, status))) if !status.ready() => Err(Unhealthy::Helper(format!(
            "redo helper at {addr} is {}, not streaming with consistent pages",
            status.state
        ))),
        Some(Ok(_)) => Ok(()),
    }
}

/// The helper's `/status` at `fpw_pushdown.helper_address` (None when the address is unset),
/// with the address; Err names why it could not be read.
pub fn read_helper_status(
    timeout: std::time::Duration,
) -> Option<Result<(String, HelperStatus), Unhealthy>> {
    let addr = crate::helper_client::helper_address()?;
    let resp = match crate::helper_client::request("GET", "/status", timeout) {
        Ok(r) => r,
        Err(e) => return Some(Err(Unhealthy::Helper(e))),
    };
    if resp.status != 200 {
        return Some(Err(Unhealthy::Helper(format!(
            "redo helper at {addr} answered /status with HTTP {}",
            resp.status
        ))));
    }
    Some(
        HelperStatus::parse(&resp.body)
            .map(|status| (addr.clone(), status))
            .map_err(|e| {
                Unhealthy::Helper(format!("redo helper at {addr}: unreadable /status: {e}"))
            }),
    )
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
        let msg = Unhealthy::Lagging {
            slot: "s".into(),
            lag: 10,
            max: 9,
        }
        .to_string();
        assert!(msg.contains("10 bytes") && msg.contains("9 bytes") && msg.contains("\"s\""));
    }
}
