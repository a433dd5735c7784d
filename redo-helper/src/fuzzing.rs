//! Entry points for the coverage-guided fuzz targets in `redo-helper/fuzz/` (cargo-fuzz,
//! libFuzzer): each feeds arbitrary bytes to one parser of input the helper does not control
//! and must turn into typed errors, never panics. Not an API: hidden from the documentation.

use crate::wal::{DecoderConfig, Lsn, WalStreamDecoder};

/// WAL bytes as streamed from 0/1000000, in chunks whose sizes come from the input's first
/// byte; every record decoded is described and its images restored.
pub fn wal_stream(data: &[u8]) {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1) * 97;
    let Ok(mut d) = WalStreamDecoder::new(Lsn(0x100_0000), DecoderConfig::default()) else {
        return;
    };
    let mut page = [0u8; crate::wal::page::BLCKSZ];
    let mut line = String::new();
    for piece in bytes.chunks(chunk) {
        d.push(piece);
        loop {
            match d.next_record() {
                Ok(Some(rec)) => {
                    line.clear();
                    crate::wal::desc::format_record(&rec, &mut line);
                    for b in rec.blocks() {
                        let _ = rec.restore_block_image(b, &mut page);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// `global/pg_control`'s bytes.
pub fn control_file(data: &[u8]) {
    let _ = crate::pgdata::control_file::ControlFile::parse(data);
}

/// `helper.json`'s text.
pub fn helper_json(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::store::meta::HelperMeta::parse(text, std::path::Path::new("helper.json"));
    }
}

/// A replication connection's messages: the framing and parsing of backend messages and,
/// for CopyData, the XLogData and keepalive messages inside.
pub fn replication_message(data: &[u8]) {
    let _ = crate::stream::connection::parse_backend_messages(data);
    let _ = crate::stream::replication::parse_stream_message(bytes::Bytes::copy_from_slice(data));
}

/// A connection string or URI from the command line (`--connect`), with no environment.
pub fn conninfo(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::stream::conninfo::ConnInfo::parse_with_env(text, |_| None);
    }
}

/// A password file's text, matched against a key taken from the input's first line.
pub fn pgpass(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (first, rest) = text.split_once('\n').unwrap_or(("", &text));
    let mut fields = first.splitn(4, ':');
    let key = crate::stream::pgpass::PassKey {
        host: fields.next().unwrap_or(""),
        port: fields.next().unwrap_or(""),
        database: fields.next().unwrap_or(""),
        user: fields.next().unwrap_or(""),
    };
    let _ = crate::stream::pgpass::lookup(rest, &key);
}
