//! XLOG redo (`xlog_redo` in `access/transam/xlog.c`) as far as pages are concerned.
//!
//! XLOG_FPI and XLOG_FPI_FOR_HINT carry nothing but block references with images; the
//! dispatcher restores applicable images before any rmgr code runs. An FPI_FOR_HINT
//! written with full_page_writes off has no image: there is nothing to do for its page.
//! XLOG_FPW_CHANGE and checkpoints change no page (the store tracks the FPW mode).

use super::page::Page;
use super::{LsnRule, RedoErrorKind, malformed};
use crate::wal::block::BlockRef;
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::xlog::{XLOG_FPI, XLOG_FPI_FOR_HINT};

pub(super) fn redo_block(
    rec: &DecodedRecord,
    block: &BlockRef,
    _page: &mut Page,
) -> Result<LsnRule, RedoErrorKind> {
    match rec.rmgr_info() {
        // An XLOG_FPI block without an applicable image is an error in PostgreSQL too.
        XLOG_FPI => Err(malformed(format!(
            "XLOG_FPI block {} did not contain an applicable full-page image",
            block.id
        ))),
        XLOG_FPI_FOR_HINT => Ok(LsnRule::Keep),
        other => Err(malformed(format!(
            "XLOG record type {other:#x} does not reference pages"
        ))),
    }
}
