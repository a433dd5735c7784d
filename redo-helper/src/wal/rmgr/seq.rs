//! Sequence records (`commands/sequence.h`): `XLOG_SEQ_LOG` carries the relation and the
//! whole sequence tuple that redo writes onto a fresh page.

use super::MainDataReader;
use crate::wal::block::RelFileLocator;
use crate::wal::error::MainDataError;
use crate::wal::record::DecodedRecord;

pub const XLOG_SEQ_LOG: u8 = 0x00;

pub fn identify(info: u8) -> Option<&'static str> {
    (info & 0xF0 == XLOG_SEQ_LOG).then_some("LOG")
}

/// `xl_seq_rec` followed by the sequence tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqLog<'a> {
    pub node: RelFileLocator,
    pub tuple: &'a [u8],
}

pub fn parse(rec: &DecodedRecord) -> Result<SeqLog<'_>, MainDataError> {
    let mut r = MainDataReader::new(rec.main_data(), rec.lsn, "Sequence", "LOG");
    Ok(SeqLog {
        node: r.rel()?,
        tuple: r.rest(),
    })
}
