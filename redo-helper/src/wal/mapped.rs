//! Segment files read in place: a read-only mapping of a whole segment file, handed to the
//! decoder as [`SharedBytes`] instead of being copied into a buffer by `read(2)`.
//!
//! Why: decoding is mostly moving bytes. Read into a buffer, every WAL byte is copied by
//! the kernel (page cache to the buffer), again into the record (records cross pages, whose
//! headers sit between their parts) and checksummed; `pg_waldump` does the same with
//! 8 KB `pread`s. Mapped, the first copy is gone: the page cache's pages are the input, and
//! `MADV_POPULATE_READ` sets up the page tables of the part to be read in one call (on the
//! read-ahead thread when there is one) rather than one fault per few pages on the decoding
//! thread.
//!
//! The cost of a mapping: a file that shrinks while mapped makes reading the lost part
//! raise `SIGBUS`, which would end the process. So mapping is opt-in
//! ([`super::FileReaderOptions::map_files`]) for readers of files nobody shrinks:
//! PostgreSQL never truncates a segment file (it recycles one by renaming it, removes one by
//! unlinking it, and a mapping of an unlinked file stays valid), and the helper's archive
//! only ever extends its segments to their full size (`store::archive`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::Arc;

/// A read-only shared mapping of the first `len` bytes of a file, unmapped on drop.
#[derive(Debug)]
pub struct MappedFile {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value: any thread may read it, and
// only the drop (with exclusive access) unmaps it.
unsafe impl Send for MappedFile {}
// SAFETY: as above; `&MappedFile` only gives out shared slices.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Maps the first `len` bytes of `file` (which must be at least that long: the caller
    /// checks the size first, see the module doc on shrinking files), page tables populated.
    pub fn map(file: &File, len: usize) -> io::Result<MappedFile> {
        Self::map_populating(file, len, 0..len)
    }

    /// Like [`map`](Self::map), with the page tables populated only for the bytes
    /// `populate` (those that will be read: a reader that stops early, like a part of
    /// `waldump --stats` reading just into the next segment, does not pay for setting up
    /// the rest; populating costs ~0.3 us a page here, more than the read of it). Pages
    /// outside it are mapped by faults if read after all.
    pub fn map_populating(
        file: &File,
        len: usize,
        populate: std::ops::Range<usize>,
    ) -> io::Result<MappedFile> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map an empty range",
            ));
        }
        // SAFETY: a fresh read-only mapping of an open file descriptor at offset 0; the
        // result is checked for failure before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p as *mut u8).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let page = 4096;
        let start = populate.start.min(len) / page * page;
        let end = populate.end.min(len).div_ceil(page) * page;
        if end > start {
            // SAFETY: advice on a range inside the mapping just made. MADV_POPULATE_READ
            // (Linux 5.14) faults the pages in as reads would; if the kernel refuses it, the
            // reads fault them in instead, so the result is ignored.
            unsafe {
                libc::madvise(
                    ptr.as_ptr().add(start) as *mut libc::c_void,
                    (end - start).min(len - start),
                    libc::MADV_POPULATE_READ,
                );
            }
        }
        Ok(MappedFile { ptr, len })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no slice of it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}

/// A range of a mapped file, shared between the reader that mapped it and the decoder.
#[derive(Debug, Clone)]
pub struct SharedBytes {
    map: Arc<MappedFile>,
    start: usize,
    end: usize,
}

impl SharedBytes {
    /// Bytes `start..end` of `map` (clamped to the mapping).
    pub fn new(map: Arc<MappedFile>, start: usize, end: usize) -> SharedBytes {
        let end = end.min(map.len);
        SharedBytes {
            map,
            start: start.min(end),
            end,
        }
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        &self.map.as_slice()[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// The whole mapping these bytes are part of.
    pub(crate) fn map(&self) -> &Arc<MappedFile> {
        &self.map
    }

    /// Offset of these bytes in the mapping.
    pub(crate) fn start(&self) -> usize {
        self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maps_a_file_and_slices_it() {
        let dir = std::env::temp_dir().join(format!("mapped-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let f = File::open(&path).unwrap();
        let m = Arc::new(MappedFile::map(&f, data.len()).unwrap());
        assert_eq!(m.as_slice(), &data[..]);
        let part = SharedBytes::new(m.clone(), 8192, 30_000);
        assert_eq!(part.as_slice(), &data[8192..]);
        assert_eq!(part.len(), data.len() - 8192);
        assert!(MappedFile::map(&f, 0).is_err());
        drop(f);
        std::fs::remove_dir_all(&dir).unwrap();
        // The mapping outlives the file's removal.
        assert_eq!(part.as_slice()[0], data[8192]);
    }
}
