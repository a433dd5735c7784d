//! Bounds-checked little-endian reads over a record's main data (or block data). Every
//! read that would go past the end is a [`MainDataError`], never a panic.

use crate::wal::block::RelFileLocator;
use crate::wal::error::MainDataError;
use crate::wal::page::Lsn;

/// Cursor over main data, remembering which record it belongs to for error messages.
#[derive(Debug, Clone)]
pub struct MainDataReader<'a> {
    data: &'a [u8],
    pos: usize,
    lsn: Lsn,
    rmgr: &'static str,
    record: &'static str,
}

impl<'a> MainDataReader<'a> {
    #[inline]
    pub fn new(data: &'a [u8], lsn: Lsn, rmgr: &'static str, record: &'static str) -> Self {
        MainDataReader {
            data,
            pos: 0,
            lsn,
            rmgr,
            record,
        }
    }

    pub fn error(&self, what: impl Into<String>) -> MainDataError {
        MainDataError {
            lsn: self.lsn,
            rmgr: self.rmgr,
            record: self.record,
            what: what.into(),
        }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    #[inline]
    pub fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Moves to absolute offset `off` (for C structs with padding).
    pub fn seek(&mut self, off: usize) -> Result<(), MainDataError> {
        if off > self.data.len() {
            return Err(self.error(format!("offset {off} beyond {} bytes", self.data.len())));
        }
        self.pos = off;
        Ok(())
    }

    /// Skips to the next multiple of `align` (C struct member alignment).
    pub fn align(&mut self, align: usize) -> Result<(), MainDataError> {
        let off = self.pos.div_ceil(align) * align;
        self.seek(off.min(self.data.len().max(self.pos)))
    }

    // The fixed-size readers are inlined into the record parsers (they run for every
    // record the redo applies); the error, never taken on valid WAL, is built out of line.
    #[inline]
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], MainDataError> {
        if self.remaining() < n {
            return Err(self.short(n));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[cold]
    #[inline(never)]
    fn short(&self, n: usize) -> MainDataError {
        self.error(format!(
            "need {n} bytes at offset {}, only {} left",
            self.pos,
            self.remaining()
        ))
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.data[self.pos..];
        self.pos = self.data.len();
        s
    }

    #[inline]
    pub fn u8(&mut self) -> Result<u8, MainDataError> {
        Ok(self.bytes(1)?[0])
    }

    pub fn bool(&mut self) -> Result<bool, MainDataError> {
        Ok(self.u8()? != 0)
    }

    #[inline]
    pub fn u16(&mut self) -> Result<u16, MainDataError> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    #[inline]
    pub fn u32(&mut self) -> Result<u32, MainDataError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn i32(&mut self) -> Result<i32, MainDataError> {
        Ok(self.u32()? as i32)
    }

    pub fn u64(&mut self) -> Result<u64, MainDataError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub fn i64(&mut self) -> Result<i64, MainDataError> {
        Ok(self.u64()? as i64)
    }

    pub fn lsn(&mut self) -> Result<Lsn, MainDataError> {
        Ok(Lsn(self.u64()?))
    }

    pub fn rel(&mut self) -> Result<RelFileLocator, MainDataError> {
        Ok(RelFileLocator {
            spc_oid: self.u32()?,
            db_oid: self.u32()?,
            rel_number: self.u32()?,
        })
    }

    /// `n` uint16 values (offset numbers), with `n` bounded by the bytes present.
    pub fn u16_array(&mut self, n: usize) -> Result<Vec<u16>, MainDataError> {
        let b = self.bytes(
            n.checked_mul(2)
                .ok_or_else(|| self.error("array length overflow"))?,
        )?;
        Ok(b.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    }

    /// `n` uint32 values (xids, oids), with `n` bounded by the bytes present.
    pub fn u32_array(&mut self, n: usize) -> Result<Vec<u32>, MainDataError> {
        let b = self.bytes(
            n.checked_mul(4)
                .ok_or_else(|| self.error("array length overflow"))?,
        )?;
        Ok(b.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// `n` RelFileNodes.
    pub fn rel_array(&mut self, n: usize) -> Result<Vec<RelFileLocator>, MainDataError> {
        let b = self.bytes(
            n.checked_mul(12)
                .ok_or_else(|| self.error("array length overflow"))?,
        )?;
        Ok(b.chunks_exact(12).map(RelFileLocator::from_le).collect())
    }

    /// A NUL-terminated string (lossy UTF-8).
    pub fn cstring(&mut self) -> Result<String, MainDataError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.error("unterminated string"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
}
