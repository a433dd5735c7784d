//! Sequence redo (`seq_redo` in `commands/sequence.c`): every XLOG_SEQ_LOG rebuilds the
//! sequence's only page from scratch with the logged tuple.

use super::page::{Page, PageLayout, put_u32};
use super::{LsnRule, RedoErrorKind, malformed};
use crate::wal::block::BlockRef;
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::seq;

/// `SEQ_MAGIC`, stored in the page's special space (`sequence_magic`).
pub(crate) const SEQ_MAGIC: u32 = 0x1717;

pub(super) fn redo_block(
    rec: &DecodedRecord,
    _block: &BlockRef,
    page: &mut Page,
) -> Result<LsnRule, RedoErrorKind> {
    if rec.rmgr_info() != seq::XLOG_SEQ_LOG {
        return Err(malformed(format!(
            "unknown sequence record type {:#x}",
            rec.rmgr_info()
        )));
    }
    let log = seq::parse(rec).map_err(|e| malformed(e.to_string()))?;
    page.init(4);
    let special = page.special() as usize;
    put_u32(page, special, SEQ_MAGIC);
    page.add_item(log.tuple, 1, 0)?;
    Ok(LsnRule::Stamp)
}
