//! Finding the `XLOG_FPW_CHANGE` record the checkpointer writes after a reload.
//!
//! The extension holds no WAL logic of its own: it drives PostgreSQL's own `XLogReader`
//! with `read_local_xlog_page_no_wait` (the reader pg_walinspect uses in 15), which only
//! returns WAL that is already flushed. So a record found here is on disk.

use pgrx::pg_sys;
use std::ffi::CStr;
use std::ptr;

/// `RM_XLOG_ID` (access/rmgrlist.h) and `XLOG_FPW_CHANGE` (catalog/pg_control.h).
const RM_XLOG_ID: u8 = 0;
const XLOG_FPW_CHANGE: u8 = 0x80;
/// Low bits of xl_info belong to the WAL machinery, not the rmgr (`XLR_INFO_MASK`).
const XLR_INFO_MASK: u8 = 0x0F;

/// The reader callbacks are passed to C as function pointers, so they must be the raw
/// symbols (pgrx's `pg_sys` versions are Rust wrappers). Signatures: access/xlogutils.h.
mod raw {
    use pgrx::pg_sys::{TimeLineID, XLogReaderState, XLogRecPtr, XLogSegNo};
    use std::ffi::{c_char, c_int};

    unsafe extern "C-unwind" {
        pub fn read_local_xlog_page_no_wait(
            state: *mut XLogReaderState,
            target_page_ptr: XLogRecPtr,
            req_len: c_int,
            target_rec_ptr: XLogRecPtr,
            cur_page: *mut c_char,
        ) -> c_int;
        pub fn wal_segment_open(
            state: *mut XLogReaderState,
            next_seg_no: XLogSegNo,
            tli_p: *mut TimeLineID,
        );
        pub fn wal_segment_close(state: *mut XLogReaderState);
    }
}

/// An XLOG_FPW_CHANGE record: where it starts and the value it logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FpwChange {
    pub lsn: u64,
    pub full_page_writes: bool,
}

/// Incremental scanner over flushed WAL, from a position that need not be a record start.
pub struct FpwChangeScanner {
    reader: *mut pg_sys::XLogReaderState,
    /// Kept alive for as long as the reader points at it.
    private: Box<pg_sys::ReadLocalXLogPageNoWaitPrivate>,
    /// Where the next scan starts.
    cursor: u64,
    /// Whether `cursor` is a known record boundary (after the first record was read).
    at_record_boundary: bool,
    pub last_error: Option<String>,
}

impl FpwChangeScanner {
    pub fn new(start: u64) -> Self {
        let mut private = Box::new(pg_sys::ReadLocalXLogPageNoWaitPrivate { end_of_wal: false });
        let mut routine = pg_sys::XLogReaderRoutine {
            page_read: Some(raw::read_local_xlog_page_no_wait),
            segment_open: Some(raw::wal_segment_open),
            segment_close: Some(raw::wal_segment_close),
        };
        // SAFETY: XLogReaderAllocate copies the routine; `private` outlives the reader.
        let reader = unsafe {
            pg_sys::XLogReaderAllocate(
                pg_sys::wal_segment_size,
                ptr::null(),
                &mut routine,
                (&mut *private as *mut pg_sys::ReadLocalXLogPageNoWaitPrivate).cast(),
            )
        };
        if reader.is_null() {
            pgrx::error!("fpw_pushdown: out of memory while allocating a WAL reader");
        }
        FpwChangeScanner {
            reader,
            private,
            cursor: start,
            at_record_boundary: false,
            last_error: None,
        }
    }

    /// Reads flushed WAL from the cursor to its end; returns the first FPW_CHANGE record
    /// whose value is `want`. Call again later to continue where this call stopped.
    pub fn scan_for(&mut self, want: bool) -> Option<FpwChange> {
        self.private.end_of_wal = false;
        // SAFETY: reader is valid for the scanner's lifetime; the decoded record is only
        // read before the next XLogReadRecord call.
        unsafe {
            let start = if self.at_record_boundary {
                self.cursor
            } else {
                // The cursor is an insert position; the first record at or after it is ours.
                let first = pg_sys::XLogFindNextRecord(self.reader, self.cursor);
                if first == 0 {
                    return None; // nothing flushed past the cursor yet
                }
                first
            };
            pg_sys::XLogBeginRead(self.reader, start);
            loop {
                let mut errormsg: *mut std::ffi::c_char = ptr::null_mut();
                let record = pg_sys::XLogReadRecord(self.reader, &mut errormsg);
                if record.is_null() {
                    if !self.private.end_of_wal && !errormsg.is_null() {
                        self.last_error =
                            Some(CStr::from_ptr(errormsg).to_string_lossy().into_owned());
                    }
                    return None;
                }
                self.cursor = (*self.reader).EndRecPtr;
                self.at_record_boundary = true;
                let decoded = (*self.reader).record;
                if decoded.is_null() {
                    continue;
                }
                let header = &(*decoded).header;
                if header.xl_rmid == RM_XLOG_ID
                    && (header.xl_info & !XLR_INFO_MASK) == XLOG_FPW_CHANGE
                    && (*decoded).main_data_len >= 1
                    && !(*decoded).main_data.is_null()
                {
                    let value = *((*decoded).main_data as *const u8) != 0;
                    if value == want {
                        return Some(FpwChange {
                            lsn: (*self.reader).ReadRecPtr,
                            full_page_writes: value,
                        });
                    }
                }
            }
        }
    }
}

impl Drop for FpwChangeScanner {
    fn drop(&mut self) {
        // SAFETY: allocated in new(), freed once.
        unsafe { pg_sys::XLogReaderFree(self.reader) };
    }
}

/// Flushes everything inserted so far: the checkpointer does not flush XLOG_FPW_CHANGE by
/// itself, and the local page reader only sees flushed WAL.
pub fn flush_inserted_wal() {
    // SAFETY: plain backend calls; XLogFlush of the current insert position is valid.
    unsafe { pg_sys::XLogFlush(pg_sys::GetXLogInsertRecPtr()) };
}

/// Current WAL insert position.
pub fn insert_lsn() -> u64 {
    // SAFETY: reads shared insert state under its own locks.
    unsafe { pg_sys::GetXLogInsertRecPtr() }
}
