//! Physical replication commands and the CopyBoth sub-protocol (PostgreSQL 15,
//! "Streaming Replication Protocol"): IDENTIFY_SYSTEM, CREATE_REPLICATION_SLOT,
//! START_REPLICATION, XLogData ('w'), primary keepalive ('k') and standby status update ('r').

use super::connection::{BackendMessage, ConnectionError, PgConnection};
use crate::wal::page::Lsn;
use bytes::Bytes;
use postgres_protocol::message::backend::Message;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// IDENTIFY_SYSTEM's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SystemInfo {
    pub system_identifier: u64,
    pub timeline: u32,
    pub xlogpos: Lsn,
}

/// A message the server sends inside COPY BOTH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerStreamMessage {
    /// WAL bytes starting at `start`; `server_end` is the server's current end of WAL.
    XLogData {
        start: Lsn,
        server_end: Lsn,
        data: Bytes,
    },
    Keepalive {
        server_end: Lsn,
        reply_requested: bool,
    },
}

/// The end of a COPY BOTH stream from the server side.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    Message(ServerStreamMessage),
    /// CopyDone: the server ended streaming (timeline switch or shutdown).
    Ended,
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
}

/// Parses one CopyData payload of the replication stream.
pub(crate) fn parse_stream_message(data: Bytes) -> Result<ServerStreamMessage, String> {
    match data.first() {
        Some(b'w') => {
            let (Some(start), Some(end)) = (be_u64(&data, 1), be_u64(&data, 9)) else {
                return Err(format!("XLogData message too short ({} bytes)", data.len()));
            };
            if data.len() < 25 {
                return Err(format!("XLogData message too short ({} bytes)", data.len()));
            }
            Ok(ServerStreamMessage::XLogData {
                start: Lsn(start),
                server_end: Lsn(end),
                data: data.slice(25..),
            })
        }
        Some(b'k') => {
            let (Some(end), Some(&reply)) = (be_u64(&data, 1), data.get(17)) else {
                return Err(format!(
                    "keepalive message too short ({} bytes)",
                    data.len()
                ));
            };
            Ok(ServerStreamMessage::Keepalive {
                server_end: Lsn(end),
                reply_requested: reply != 0,
            })
        }
        Some(t) => Err(format!("unknown replication message type '{}'", *t as char)),
        None => Err("empty CopyData in replication stream".into()),
    }
}

/// Current time as PostgreSQL's TimestampTz.
pub(crate) fn pg_now() -> i64 {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    us - PG_EPOCH_OFFSET_US
}

/// Standby status update ('r'): what we have written, flushed (durably) and applied.
pub(crate) fn standby_status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    reply_requested: bool,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(34);
    m.push(b'r');
    m.extend_from_slice(&write.0.to_be_bytes());
    m.extend_from_slice(&flush.0.to_be_bytes());
    m.extend_from_slice(&apply.0.to_be_bytes());
    m.extend_from_slice(&pg_now().to_be_bytes());
    m.push(u8::from(reply_requested));
    m
}

/// Parses a GUC size as SHOW prints it ("16MB", "1GB", "8192").
pub(crate) fn parse_size(text: &str) -> Option<u32> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..digits].parse().ok()?;
    let mult = match &t[digits..] {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    u32::try_from(n.checked_mul(mult)?).ok()
}

/// Quotes an identifier for a replication command.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

impl PgConnection {
    pub(crate) async fn identify_system(&mut self) -> Result<SystemInfo, ConnectionError> {
        let sets = self.simple_query("IDENTIFY_SYSTEM").await?;
        let set = sets
            .first()
            .ok_or_else(|| self.protocol("IDENTIFY_SYSTEM returned no rows"))?;
        let sysid = set.value(0, 0).and_then(|v| v.parse::<u64>().ok());
        let tli = set.value(0, 1).and_then(|v| v.parse::<u32>().ok());
        let pos = set.value(0, 2).and_then(|v| v.parse::<Lsn>().ok());
        match (sysid, tli, pos) {
            (Some(system_identifier), Some(timeline), Some(xlogpos)) => Ok(SystemInfo {
                system_identifier,
                timeline,
                xlogpos,
            }),
            _ => Err(self.protocol(format!(
                "unexpected IDENTIFY_SYSTEM row {:?}",
                set.rows.first()
            ))),
        }
    }

    /// `SHOW wal_segment_size` (allowed on replication connections), in bytes.
    pub(crate) async fn wal_segment_size(&mut self) -> Result<u32, ConnectionError> {
        let sets = self.simple_query("SHOW wal_segment_size").await?;
        let text = sets
            .first()
            .and_then(|s| s.value(0, 0))
            .unwrap_or_default()
            .to_string();
        // Every LSN computation divides by it: a size PostgreSQL could not have
        // (IsValidWalSegSize: a power of two from 1 MB to 1 GB) is a protocol error.
        parse_size(&text)
            .filter(|&n| crate::wal::page::is_valid_segment_size(n))
            .ok_or_else(|| self.protocol(format!("unexpected wal_segment_size {text:?}")))
    }

    /// A boolean setting by `SHOW` (on replication connections too).
    pub(crate) async fn show_bool(&mut self, name: &str) -> Result<bool, ConnectionError> {
        let sets = self
            .simple_query(&format!("SHOW {}", quote_ident(name)))
            .await?;
        match sets.first().and_then(|s| s.value(0, 0)) {
            Some("on") => Ok(true),
            Some("off") => Ok(false),
            other => Err(self.protocol(format!("unexpected {name} {other:?}"))),
        }
    }

    /// Creates the physical slot with WAL reserved now; returns false if it already existed.
    pub(crate) async fn create_physical_slot_if_missing(
        &mut self,
        slot: &str,
    ) -> Result<bool, ConnectionError> {
        match self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} PHYSICAL RESERVE_WAL",
                quote_ident(slot)
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.sqlstate() == Some("42710") => Ok(false), // duplicate_object
            Err(e) => Err(e),
        }
    }

    /// START_REPLICATION SLOT … PHYSICAL; on success the connection is in COPY BOTH.
    pub(crate) async fn start_replication(
        &mut self,
        slot: &str,
        start: Lsn,
        timeline: u32,
    ) -> Result<(), ConnectionError> {
        let sql = format!(
            "START_REPLICATION SLOT {} PHYSICAL {} TIMELINE {}",
            quote_ident(slot),
            start,
            timeline
        );
        self.send_query(&sql).await?;
        loop {
            match self.read_message().await? {
                BackendMessage::CopyBothResponse => return Ok(()),
                BackendMessage::Message(Message::ErrorResponse(body)) => {
                    let err = self.server_error(&body);
                    // The server follows an error with ReadyForQuery.
                    let _ = self.read_message().await;
                    return Err(err);
                }
                BackendMessage::Message(Message::NoticeResponse(_)) => {}
                BackendMessage::Message(_) => {
                    return Err(self.protocol(format!("unexpected reply to {sql:?}")));
                }
            }
        }
    }

    /// Next message of the COPY BOTH stream.
    pub(crate) async fn next_stream_event(&mut self) -> Result<StreamEvent, ConnectionError> {
        loop {
            let m = self.read_message().await?;
            if let Some(ev) = self.stream_event(m)? {
                return Ok(ev);
            }
        }
    }

    /// Next message of the COPY BOTH stream among what the socket holds now, without waiting:
    /// None when no complete message is there.
    pub(crate) fn next_stream_event_now(&mut self) -> Result<Option<StreamEvent>, ConnectionError> {
        loop {
            let m = match self.buffered_message()? {
                Some(m) => m,
                None => {
                    if self.receive_available()? == 0 {
                        return Ok(None);
                    }
                    continue;
                }
            };
            if let Some(ev) = self.stream_event(m)? {
                return Ok(Some(ev));
            }
        }
    }

    /// The event a message of the stream is; None for one to skip (a notice).
    fn stream_event(&self, m: BackendMessage) -> Result<Option<StreamEvent>, ConnectionError> {
        Ok(Some(match m {
            BackendMessage::Message(Message::CopyData(body)) => {
                parse_stream_message(body.into_bytes())
                    .map(StreamEvent::Message)
                    .map_err(|e| self.protocol(e))?
            }
            BackendMessage::Message(Message::CopyDone) => StreamEvent::Ended,
            BackendMessage::Message(Message::ErrorResponse(body)) => {
                return Err(self.server_error(&body));
            }
            BackendMessage::Message(Message::NoticeResponse(_)) => return Ok(None),
            _ => return Err(self.protocol("unexpected message in replication stream")),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&0x1_0000_0000u64.to_be_bytes());
        w.extend_from_slice(&0x1_0000_0100u64.to_be_bytes());
        w.extend_from_slice(&0i64.to_be_bytes());
        w.extend_from_slice(b"abc");
        let m = parse_stream_message(Bytes::from(w)).unwrap();
        assert_eq!(
            m,
            ServerStreamMessage::XLogData {
                start: Lsn(0x1_0000_0000),
                server_end: Lsn(0x1_0000_0100),
                data: Bytes::from_static(b"abc")
            }
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&42u64.to_be_bytes());
        k.extend_from_slice(&0i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_stream_message(Bytes::from(k)).unwrap(),
            ServerStreamMessage::Keepalive {
                server_end: Lsn(42),
                reply_requested: true
            }
        );
    }

    #[test]
    fn rejects_short_or_unknown() {
        assert!(parse_stream_message(Bytes::from_static(b"w123")).is_err());
        assert!(parse_stream_message(Bytes::from_static(b"k")).is_err());
        assert!(parse_stream_message(Bytes::from_static(b"z")).is_err());
        assert!(parse_stream_message(Bytes::new()).is_err());
    }

    #[test]
    fn status_update_layout() {
        let m = standby_status_update(Lsn(1), Lsn(2), Lsn(3), false);
        assert_eq!(m.len(), 34);
        assert_eq!(m[0], b'r');
        assert_eq!(u64::from_be_bytes(m[9..17].try_into().unwrap()), 2);
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("8192"), Some(8192));
        assert_eq!(parse_size("16 parsecs"), None);
    }
}
