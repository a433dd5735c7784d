//! Cluster-wide memory of what fpw_pushdown did, kept in `$PGDATA/fpw_pushdown.state`.
//!
//! full_page_writes is a cluster-wide setting, so its bookkeeping must not live in one
//! database: a small `key=value` file in the data directory (backends run with the data
//! directory as working directory) is read by every backend and by the autopilot worker.
//! Writes go to a temporary file, are fsynced and renamed, so a crash leaves either the old
//! or the new state; an advisory file lock serialises read-modify-write cycles.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

const STATE_FILE: &str = "fpw_pushdown.state";
const STATE_TMP: &str = "fpw_pushdown.state.tmp";
const LOCK_FILE: &str = "fpw_pushdown.state.lock";

/// Direction of a full_page_writes switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FpwDirection {
    On,
    Off,
}

impl FpwDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            FpwDirection::On => "on",
            FpwDirection::Off => "off",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "on" => Some(FpwDirection::On),
            "off" => Some(FpwDirection::Off),
            _ => None,
        }
    }
}

/// WAL counters at the moment of `fpw_pushdown.reset_wal_stats()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalBaseline {
    pub records: i64,
    pub fpi: i64,
    pub bytes: i64,
    pub transactions: i64,
    pub at_unix: u64,
}

/// Everything the extension remembers across sessions and restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtensionState {
    /// LSN of the last XLOG_FPW_CHANGE record this extension caused; absent while a switch
    /// off is requested and not yet confirmed (a backend that died mid-switch leaves it so).
    pub last_switch_lsn: Option<u64>,
    pub last_switch_direction: Option<FpwDirection>,
    /// Who caused it: a role name, or "autopilot".
    pub last_switch_by: Option<String>,
    pub last_switch_at_unix: Option<u64>,
    /// The last switch was `disable_full_page_writes(force => true)`: the autopilot stands
    /// down until the next guarded switch (the DBA accepted running without a helper).
    pub last_switch_forced: bool,
    /// Human-readable description of the autopilot's last action.
    pub autopilot_last_action: Option<String>,
    pub wal_baseline: Option<WalBaseline>,
}

/// The record of one switch: the `last_switch_*` fields of [`ExtensionState`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchRecord {
    /// None while a switch off is requested but not yet confirmed (its intent is recorded
    /// before full_page_writes is changed).
    pub lsn: Option<u64>,
    pub direction: Option<FpwDirection>,
    pub by: Option<String>,
    pub at_unix: Option<u64>,
    pub forced: bool,
}

impl SwitchRecord {
    /// The same switch, whether or not its LSN has been recorded yet.
    pub fn same_switch(&self, other: &SwitchRecord) -> bool {
        self.direction == other.direction
            && self.by == other.by
            && self.at_unix == other.at_unix
            && self.forced == other.forced
    }
}

impl ExtensionState {
    /// full_page_writes was last switched off with `force => true` (or such a switch is under
    /// way): the DBA accepted running without a helper, and the autopilot stands down. Any
    /// other full_page_writes = off, recorded or not, is the autopilot's to watch.
    pub fn forced_off(&self) -> bool {
        self.last_switch_direction == Some(FpwDirection::Off) && self.last_switch_forced
    }

    pub fn switch_record(&self) -> SwitchRecord {
        SwitchRecord {
            lsn: self.last_switch_lsn,
            direction: self.last_switch_direction,
            by: self.last_switch_by.clone(),
            at_unix: self.last_switch_at_unix,
            forced: self.last_switch_forced,
        }
    }

    pub fn set_switch_record(&mut self, r: SwitchRecord) {
        self.last_switch_lsn = r.lsn;
        self.last_switch_direction = r.direction;
        self.last_switch_by = r.by;
        self.last_switch_at_unix = r.at_unix;
        self.last_switch_forced = r.forced;
    }

    fn to_text(&self) -> String {
        let mut out = String::from("# fpw_pushdown state; written by the extension, do not edit\n");
        let mut put = |k: &str, v: String| {
            out.push_str(k);
            out.push('=');
            // Values are single-line; newlines would break the format.
            out.push_str(&v.replace(['\n', '\r'], " "));
            out.push('\n');
        };
        if let Some(v) = self.last_switch_lsn {
            put("last_switch_lsn", v.to_string());
        }
        if let Some(v) = self.last_switch_direction {
            put("last_switch_direction", v.as_str().to_string());
        }
        if let Some(v) = &self.last_switch_by {
            put("last_switch_by", v.clone());
        }
        if let Some(v) = self.last_switch_at_unix {
            put("last_switch_at", v.to_string());
        }
        if self.last_switch_forced {
            put("last_switch_forced", "true".to_string());
        }
        if let Some(v) = &self.autopilot_last_action {
            put("autopilot_last_action", v.clone());
        }
        if let Some(b) = self.wal_baseline {
            put("baseline_records", b.records.to_string());
            put("baseline_fpi", b.fpi.to_string());
            put("baseline_bytes", b.bytes.to_string());
            put("baseline_transactions", b.transactions.to_string());
            put("baseline_at", b.at_unix.to_string());
        }
        out
    }

    /// Parses the file; unknown or malformed lines are ignored so an older or damaged file
    /// never prevents switching full_page_writes back on.
    fn from_text(text: &str) -> Self {
        let kv: BTreeMap<&str, &str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .collect();
        let num = |k: &str| kv.get(k).and_then(|v| v.parse::<u64>().ok());
        let int = |k: &str| kv.get(k).and_then(|v| v.parse::<i64>().ok());
        let wal_baseline = match (
            int("baseline_records"),
            int("baseline_fpi"),
            int("baseline_bytes"),
            int("baseline_transactions"),
            num("baseline_at"),
        ) {
            (Some(records), Some(fpi), Some(bytes), Some(transactions), Some(at_unix)) => {
                Some(WalBaseline {
                    records,
                    fpi,
                    bytes,
                    transactions,
                    at_unix,
                })
            }
            _ => None,
        };
        ExtensionState {
            last_switch_lsn: num("last_switch_lsn"),
            last_switch_direction: kv
                .get("last_switch_direction")
                .and_then(|v| FpwDirection::parse(v)),
            last_switch_by: kv.get("last_switch_by").map(|v| v.to_string()),
            last_switch_at_unix: num("last_switch_at"),
            last_switch_forced: kv.get("last_switch_forced") == Some(&"true"),
            autopilot_last_action: kv.get("autopilot_last_action").map(|v| v.to_string()),
            wal_baseline,
        }
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the state; a missing file is the empty state.
pub fn load() -> io::Result<ExtensionState> {
    load_from(STATE_FILE)
}

fn load_from(path: &str) -> io::Result<ExtensionState> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(ExtensionState::from_text(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ExtensionState::default()),
        Err(e) => Err(e),
    }
}

/// Read-modify-write under an exclusive file lock, durable before it returns.
pub fn update(change: impl FnOnce(&mut ExtensionState)) -> io::Result<ExtensionState> {
    update_at(STATE_FILE, STATE_TMP, LOCK_FILE, change)
}

fn update_at(
    path: &str,
    tmp: &str,
    lock: &str,
    change: impl FnOnce(&mut ExtensionState),
) -> io::Result<ExtensionState> {
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock)?;
    lock_file.lock()?;
    let mut state = load_from(path)?;
    change(&mut state);
    {
        let mut f = File::create(tmp)?;
        f.write_all(state.to_text().as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(tmp, path)?;
    // Make the rename itself durable.
    let dir = std::path::Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty());
    File::open(dir.unwrap_or_else(|| std::path::Path::new(".")))?.sync_all()?;
    lock_file.unlock()?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let s = ExtensionState {
            last_switch_lsn: Some(0x1_0000_0028),
            last_switch_direction: Some(FpwDirection::Off),
            last_switch_by: Some("alice".into()),
            last_switch_at_unix: Some(1_700_000_000),
            last_switch_forced: false,
            autopilot_last_action: Some("re-enabled at 0/3000028: slot inactive\nfor 10s".into()),
            wal_baseline: Some(WalBaseline {
                records: 1,
                fpi: 2,
                bytes: 3,
                transactions: 4,
                at_unix: 5,
            }),
        };
        let back = ExtensionState::from_text(&s.to_text());
        assert_eq!(back.last_switch_lsn, s.last_switch_lsn);
        assert_eq!(back.wal_baseline, s.wal_baseline);
        assert_eq!(
            back.autopilot_last_action.as_deref(),
            Some("re-enabled at 0/3000028: slot inactive for 10s")
        );
        assert!(!back.forced_off());
        let forced = ExtensionState {
            last_switch_forced: true,
            ..s
        };
        let back = ExtensionState::from_text(&forced.to_text());
        assert!(back.last_switch_forced && back.forced_off());
    }

    /// Only a recorded forced switch off makes the autopilot stand down: no record, a damaged
    /// or unreadable file (the empty state), a last switch on, a guarded switch off and an
    /// unconfirmed one are all watched.
    #[test]
    fn only_a_forced_switch_off_is_left_alone() {
        assert!(!ExtensionState::default().forced_off());
        let off = |forced, lsn| {
            let mut s = ExtensionState::default();
            s.set_switch_record(SwitchRecord {
                lsn,
                direction: Some(FpwDirection::Off),
                by: Some("alice".into()),
                at_unix: Some(1),
                forced,
            });
            s
        };
        assert!(!off(false, Some(42)).forced_off());
        assert!(!off(false, None).forced_off());
        assert!(off(true, Some(42)).forced_off());
        assert!(off(true, None).forced_off());
        let mut on = off(true, Some(42));
        on.last_switch_direction = Some(FpwDirection::On);
        assert!(!on.forced_off());
        // The record of an unconfirmed switch survives the file, LSN absent.
        let intent = off(false, None);
        let back = ExtensionState::from_text(&intent.to_text());
        assert_eq!(back.switch_record(), intent.switch_record());
        let confirmed = SwitchRecord {
            lsn: Some(7),
            ..intent.switch_record()
        };
        assert!(confirmed.same_switch(&intent.switch_record()));
        assert!(!confirmed.same_switch(&SwitchRecord {
            at_unix: Some(2),
            ..confirmed.clone()
        }));
    }

    #[test]
    fn damaged_file_is_tolerated() {
        let s = ExtensionState::from_text(
            "garbage\nlast_switch_lsn=xyz\nlast_switch_direction=sideways\n",
        );
        assert_eq!(s, ExtensionState::default());
    }

    #[test]
    fn update_is_atomic_and_persistent() {
        let dir = std::env::temp_dir().join(format!("fpw_state_test_{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
        let (path, tmp, lock) = (p("state"), p("state.tmp"), p("lock"));
        update_at(&path, &tmp, &lock, |s| s.last_switch_lsn = Some(42)).unwrap();
        let s = update_at(&path, &tmp, &lock, |s| {
            s.last_switch_direction = Some(FpwDirection::On)
        })
        .unwrap();
        assert_eq!(s.last_switch_lsn, Some(42));
        assert_eq!(load_from(&path).unwrap(), s);
        assert!(!std::path::Path::new(&tmp).exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
