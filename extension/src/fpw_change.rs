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
        // SAFETY: XLogReaderAllocate copies `*routine` into the new state (`state->routine =
        // *routine`), so the stack copy may die after the call; a NULL waldir is allowed (the
        // segment callbacks find the WAL directory themselves). `private_data` points into the
        // Box's heap allocation, which does not move when the Box is moved into the scanner and
        // is dropped only after Drop has freed the reader. `wal_segment_size` is set at startup
        // and constant in a backend. A NULL result (out of memory) is checked below.
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
        // SAFETY: `self.reader` is non-NULL (new() errors out otherwise) and stays allocated
        // until Drop; it is only used from this backend's thread. `errormsg`, when set, points
        // into the reader's own error buffer and is copied before the next read. The decoded
        // record (`(*reader).record`) is valid until the next XLogReadRecord call, and we read
        // only its header and, after checking `main_data` is non-NULL with length >= 1, its
        // first main-data byte (XLOG_FPW_CHANGE's payload is a single bool).
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
        // SAFETY: `reader` came non-NULL from XLogReaderAllocate in new() (no scanner exists
        // otherwise), Drop runs once and nothing uses the pointer afterwards. The scanner
        // lives on the stack of one SQL function call or one worker transaction, so the
        // memory context the reader was allocated in has not been reset yet (an ERROR unwinds
        // through this Drop before PostgreSQL aborts the transaction).
        unsafe { pg_sys::XLogReaderFree(self.reader) };
    }
}

/// `XLOG_NOOP` (catalog/pg_control.h): a record redo ignores.
const XLOG_NOOP: u8 = 0x20;

/// Whether WAL inserted from now on carries full page images: PostgreSQL's `doPageWrites`
/// (full_page_writes, or a base backup in progress). When turning FPW off, the checkpointer
/// logs XLOG_FPW_CHANGE *before* it clears the shared flag (`UpdateFullPageWrites`), so the
/// record alone does not prove that inserts have stopped taking images. A backend refreshes
/// its copy of the flag under the WAL insert lock on every insertion, so we insert a 1-byte
/// XLOG_NOOP and then read it with `GetFullPageWriteInfo`.
pub fn inserts_take_page_images() -> bool {
    let mut marker: u8 = 0;
    let (mut redo, mut do_page_writes) = (0u64, true);
    // SAFETY: XLogBeginInsert needs a primary (the callers ran check_switch_possible; in
    // recovery it raises an ERROR rather than misbehaving) and no insertion already begun in
    // this backend (none is: we do not insert WAL anywhere else). The registered data,
    // `marker`, is on this stack frame and outlives XLogInsert, which copies it into WAL.
    // GetFullPageWriteInfo only writes through the two out-pointers, both to our locals.
    unsafe {
        pg_sys::XLogBeginInsert();
        pg_sys::XLogRegisterData((&mut marker as *mut u8).cast(), 1);
        pg_sys::XLogInsert(RM_XLOG_ID, XLOG_NOOP);
        pg_sys::GetFullPageWriteInfo(&mut redo, &mut do_page_writes);
    }
    do_page_writes
}

/// Short and long WAL page header sizes (`SizeOfXLogShortPHD`, `SizeOfXLogLongPHD`).
const SHORT_PAGE_HEADER: u64 = 24;
const LONG_PAGE_HEADER: u64 = 40;
const XLOG_BLCKSZ: u64 = 8192;

/// End of the WAL inserted so far. `GetXLogInsertRecPtr` points *after* the page header when
/// the insert position is at a page boundary (e.g. right after a segment switch); that page
/// may not exist yet, and `XLogFlush` of such a position fails ("not satisfied"). No record
/// ends inside a page header, so stepping back over it gives the true end of WAL.
pub fn inserted_end(insert: u64, segment_size: u64) -> u64 {
    if segment_size > 0 && insert % segment_size == LONG_PAGE_HEADER {
        insert - LONG_PAGE_HEADER
    } else if insert % XLOG_BLCKSZ == SHORT_PAGE_HEADER {
        insert - SHORT_PAGE_HEADER
    } else {
        insert
    }
}

/// Flushes everything inserted so far: the checkpointer does not flush XLOG_FPW_CHANGE by
/// itself, and the local page reader only sees flushed WAL.
pub fn flush_inserted_wal() {
    // SAFETY: GetXLogInsertRecPtr takes the insert-position spinlock itself;
    // `wal_segment_size` is set at startup and constant afterwards. XLogFlush requires a
    // target no later than the WAL inserted so far (else it raises "xlog flush request ...
    // is not satisfied"): inserted_end() never returns more than the insert position.
    unsafe {
        let end = inserted_end(
            pg_sys::GetXLogInsertRecPtr(),
            pg_sys::wal_segment_size as u64,
        );
        pg_sys::XLogFlush(end);
    }
}

/// Current WAL insert position.
pub fn insert_lsn() -> u64 {
    // SAFETY: GetXLogInsertRecPtr reads XLogCtl's insert position under its spinlock; it
    // only needs shared memory attached, which it is in any backend or worker running SQL.
    unsafe { pg_sys::GetXLogInsertRecPtr() }
}

#[cfg(test)]
mod tests {
    use super::inserted_end;

    #[test]
    fn steps_back_over_page_headers() {
        let seg = 16 << 20;
        assert_eq!(inserted_end(0x5000028, seg), 0x5000000); // segment start, long header
        assert_eq!(inserted_end(0x5002018, seg), 0x5002000); // page start, short header
        assert_eq!(inserted_end(0x5002030, seg), 0x5002030);
    }
}
