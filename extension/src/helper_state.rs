//! The part of the redo helper's `/status` JSON the extension interprets, parsed into types.
//!
//! Only `state` and `consistent` are read. Every other field is ignored, whatever its type:
//! LSN fields are strings like "0/16B3748", and `system_identifier` is a string in newer
//! helpers (a number in older ones); neither is needed here. `helper_status()` passes the
//! JSON through untouched.

use serde::Deserialize;
use std::fmt;

/// The helper's lifecycle (`state` in /status), spelled in snake_case on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperState {
    Starting,
    Bootstrapping,
    Streaming,
    Reconnecting,
    DiskFull,
    Stopped,
}

impl HelperState {
    pub fn as_str(self) -> &'static str {
        match self {
            HelperState::Starting => "starting",
            HelperState::Bootstrapping => "bootstrapping",
            HelperState::Streaming => "streaming",
            HelperState::Reconnecting => "reconnecting",
            HelperState::DiskFull => "disk_full",
            HelperState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for HelperState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fields of `/status` the guard relies on.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct HelperStatus {
    pub state: HelperState,
    /// Base pages are consistent (WAL up to the base backup's end has been decoded).
    pub consistent: bool,
}

impl HelperStatus {
    /// Parses a `/status` body. A missing field, a wrong type or an unknown `state` is an
    /// error whose text names the problem (for an unknown state: the value and the known ones).
    pub fn parse(body: &[u8]) -> Result<HelperStatus, String> {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    }

    /// Whether full_page_writes may rely on this helper: streaming with consistent pages.
    pub fn ready(&self) -> bool {
        self.state == HelperState::Streaming && self.consistent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_state() {
        for (wire, state) in [
            ("starting", HelperState::Starting),
            ("bootstrapping", HelperState::Bootstrapping),
            ("streaming", HelperState::Streaming),
            ("reconnecting", HelperState::Reconnecting),
            ("disk_full", HelperState::DiskFull),
            ("stopped", HelperState::Stopped),
        ] {
            let body = format!(r#"{{"state": "{wire}", "consistent": true}}"#);
            let st = HelperStatus::parse(body.as_bytes()).unwrap();
            assert_eq!(st.state, state);
            assert_eq!(st.state.to_string(), wire);
            assert_eq!(st.ready(), state == HelperState::Streaming);
        }
    }

    #[test]
    fn reads_a_full_status_with_string_identifier_and_lsns() {
        // The shape of the new helper's /status: system_identifier and LSNs are strings.
        let body = br#"{
            "state": "streaming",
            "server": "127.0.0.1:5432",
            "slot": "fpw_pushdown",
            "system_identifier": "7390000000000000000",
            "timeline": 1,
            "backup_start_lsn": "0/2000028",
            "backup_end_lsn": "0/2000100",
            "consistent": true,
            "flush_lsn": "0/16B3748",
            "lag_bytes": 0,
            "fpw_modes": [],
            "retention": {"horizon_lsn": null}
        }"#;
        let st = HelperStatus::parse(body).unwrap();
        assert!(st.ready());
        // The old numeric form is accepted too: the field is not interpreted.
        let old = br#"{"state": "streaming", "consistent": false, "system_identifier": 7390000000000000000}"#;
        let st = HelperStatus::parse(old).unwrap();
        assert!(!st.ready());
    }

    #[test]
    fn unknown_state_is_an_error_naming_it() {
        let err =
            HelperStatus::parse(br#"{"state": "rebooting", "consistent": true}"#).unwrap_err();
        assert!(err.contains("rebooting"), "{err}");
        assert!(err.contains("streaming"), "{err}");
        // Not a string, or missing fields: errors, never a panic.
        assert!(HelperStatus::parse(br#"{"state": 3, "consistent": true}"#).is_err());
        assert!(HelperStatus::parse(br#"{"state": "Streaming", "consistent": true}"#).is_err());
        let err = HelperStatus::parse(br#"{"state": "streaming"}"#).unwrap_err();
        assert!(err.contains("consistent"), "{err}");
        let err = HelperStatus::parse(br#"{"consistent": true}"#).unwrap_err();
        assert!(err.contains("state"), "{err}");
        assert!(HelperStatus::parse(b"not json").is_err());
    }
}
