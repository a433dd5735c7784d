//! The page table `verify` replays into: page keys to 8 KB pages, built for a replay loop
//! whose cost is mostly memory latency (a random heap page per record).
//!
//! - An open-addressing hash table (linear probing) of small entries that carry the page's
//!   address, so the bucket of a key can be prefetched from its hash alone and the page from
//!   the bucket, records ahead of the one being applied ([`PageTable::prefetch_entry`],
//!   [`PageTable::prefetch_page`]). Prefetches are hints: a stale or missing entry only
//!   costs the prefetch.
//! - Pages live in a [`PageArena`]: anonymous mappings of 1-4 MB faulted in whole when
//!   mapped (`MADV_POPULATE_WRITE`), so loading thousands of pages costs no heap
//!   allocation and no page fault per page; optionally a thread maps and faults in the
//!   chunks ahead of use ([`PageArena::supply_ahead`]). Faulting memory in is what a page
//!   load mostly cost: ~2.5 us per 4 KB on a virtual machine with shadow paging, where
//!   every fault traps into the hypervisor.
//!
//! Removal (relation drops and truncations, which are rare) rebuilds the table.

use super::mask::PageKind;
use super::page::Page;
use crate::wal::block::PageKey;
use crate::wal::page::BLCKSZ;
use std::ptr::NonNull;

/// Pages of the first arena chunk (1 MB); each next chunk doubles, up to
/// [`MAX_CHUNK_PAGES`] (4 MB), so a small replay does not fault in memory it never uses.
const FIRST_CHUNK_PAGES: usize = 128;
const MAX_CHUNK_PAGES: usize = 512;

/// Pages of a chunk made by a [`ChunkSupply`] (4 MB): small enough that the chunks made
/// ahead and never used cost little, large enough to be few system calls.
const SUPPLY_CHUNK_PAGES: usize = 512;
/// Chunks a [`ChunkSupply`] keeps ready (plus the one it is making).
const SUPPLY_AHEAD: usize = 2;

/// A faulted-in anonymous mapping not carved into pages yet: unmapped when dropped unless
/// an arena took it over ([`Chunk::into_raw`]).
struct Chunk {
    base: NonNull<u8>,
    pages: usize,
}

// SAFETY: a chunk is the only handle to its mapping; moving it moves all access.
unsafe impl Send for Chunk {}

impl Chunk {
    /// Maps `pages` pages and faults them in; None when mmap fails.
    fn map(pages: usize) -> Option<Chunk> {
        let len = pages * BLCKSZ;
        // SAFETY: a fresh private anonymous mapping; checked for failure.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        // Fault the whole chunk in now, with one system call: the kernel allocates and
        // maps its pages in a loop, where touching them one by one would trap into the
        // kernel (and, on a virtual machine with shadow paging, into the hypervisor) once
        // per 4 KB page, inside the replay of the record that first uses it. An error (a
        // kernel before 5.14) only leaves the faults to the first touch.
        // SAFETY: the range is the private anonymous mapping made above.
        unsafe { libc::madvise(base, len, libc::MADV_POPULATE_WRITE) };
        // No MADV_HUGEPAGE: huge pages are whole 2 MB free blocks, which a virtual
        // machine's host may have reclaimed (free page reporting), and faulting them back
        // in costs far more than the small pages (measured: replay 2x slower).
        Some(Chunk {
            base: NonNull::new(base as *mut u8)?,
            pages,
        })
    }

    /// The mapping and its length in bytes; the caller unmaps it.
    fn into_raw(self) -> (NonNull<u8>, usize) {
        let me = std::mem::ManuallyDrop::new(self);
        (me.base, me.pages * BLCKSZ)
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: the chunk's own mapping, of this length, not handed to an arena.
        unsafe { libc::munmap(self.base.as_ptr() as *mut libc::c_void, self.pages * BLCKSZ) };
    }
}

/// A thread that maps and faults in arena chunks ahead of use, so that the thread
/// replaying records finds its page buffers' memory ready: on this kind of machine (a
/// virtual machine with shadow paging) faulting in memory costs ~2.5 us per 4 KB, more
/// than most records' redo. The thread stops once the arena is gone (its chunk then
/// unmapped).
struct ChunkSupply {
    ready: std::sync::mpsc::Receiver<Chunk>,
}

impl ChunkSupply {
    fn start() -> Option<ChunkSupply> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(SUPPLY_AHEAD);
        std::thread::Builder::new()
            .name("redo-memory".into())
            .spawn(move || {
                while let Some(c) = Chunk::map(SUPPLY_CHUNK_PAGES) {
                    if tx.send(c).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(ChunkSupply { ready: rx })
    }
}

/// Page-sized buffers carved out of anonymous mappings. Fresh buffers are zero (the kernel
/// zeroes anonymous memory); recycled ones are not.
pub(crate) struct PageArena {
    /// (chunk, its length, whether mmap made it (else the heap)): freed on drop.
    maps: Vec<(NonNull<u8>, usize, bool)>,
    /// The unused rest of the newest mapping: next page, pages left.
    next: Option<NonNull<u8>>,
    left: usize,
    /// Pages of the next chunk to map.
    chunk_pages: usize,
    free: Vec<NonNull<Page>>,
    supply: Option<ChunkSupply>,
}

// SAFETY: the arena owns its mappings; the raw pointers are not shared with other threads
// except by moving the whole arena, so no two threads reach one buffer through it.
unsafe impl Send for PageArena {}

impl PageArena {
    pub(crate) fn new() -> PageArena {
        PageArena {
            maps: Vec::new(),
            next: None,
            left: 0,
            chunk_pages: FIRST_CHUNK_PAGES,
            free: Vec::new(),
            supply: None,
        }
    }

    /// A page buffer; `zeroed` tells whether it is known to be all zeros.
    pub(crate) fn alloc(&mut self) -> (NonNull<Page>, bool) {
        if let Some(p) = self.free.pop() {
            return (p, false);
        }
        if self.left == 0 {
            self.map_chunk();
        }
        let p = self.next.expect("arena chunk");
        self.left -= 1;
        // SAFETY: the chunk holds `left` more pages after `p`.
        self.next = Some(unsafe { NonNull::new_unchecked(p.as_ptr().add(BLCKSZ)) });
        (p.cast(), true)
    }

    /// Returns a page buffer for reuse.
    pub(crate) fn release(&mut self, p: NonNull<Page>) {
        self.free.push(p);
    }

    fn map_chunk(&mut self) {
        if let Some(c) = self.supply.as_ref().and_then(|s| s.ready.try_recv().ok()) {
            self.take_chunk(c);
            return;
        }
        let pages = self.chunk_pages;
        self.chunk_pages = (pages * 2).min(MAX_CHUNK_PAGES);
        if let Some(c) = Chunk::map(pages) {
            self.take_chunk(c);
            return;
        }
        // Fall back to the heap (never freed before the arena is dropped).
        let len = pages * BLCKSZ;
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let p = NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        self.maps.push((p, len, false));
        self.next = Some(p);
        self.left = pages;
    }

    fn take_chunk(&mut self, c: Chunk) {
        let pages = c.pages;
        let (p, len) = c.into_raw();
        self.maps.push((p, len, true));
        self.next = Some(p);
        self.left = pages;
    }

    /// Has a thread fault in chunks ahead of use from now on (see [`ChunkSupply`]): the
    /// faults then cost the other core, not the replaying thread. At most
    /// `SUPPLY_AHEAD + 1` chunks (12 MB) are made and never used.
    pub(crate) fn supply_ahead(&mut self) {
        if self.supply.is_none() {
            self.supply = ChunkSupply::start();
        }
    }

    /// Takes over `other`'s mappings (its pages stay valid).
    pub(crate) fn absorb(&mut self, mut other: PageArena) {
        self.maps.append(&mut other.maps);
        self.free.append(&mut other.free);
    }
}

impl Drop for PageArena {
    fn drop(&mut self) {
        for (p, len, mapped) in self.maps.drain(..) {
            if mapped {
                // SAFETY: a mapping of `len` bytes made by map_chunk.
                unsafe { libc::munmap(p.as_ptr() as *mut libc::c_void, len) };
            } else {
                let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
                // SAFETY: allocated with this layout in map_chunk.
                unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
            }
        }
    }
}

/// One page of the table and what replay knows about it.
pub(crate) struct Slot {
    pub key: PageKey,
    page: NonNull<Page>,
    pub kind: Option<PageKind>,
    /// Set by a change the engine cannot replay: (LSN, description).
    pub unreadable: Option<String>,
    /// The hole (offset, length) of the full page image the page was last restored from,
    /// if that image had one: bytes PostgreSQL did not log but took as zeros. A
    /// visibility-map page logged as a standard page (`log_newpage_buffer(.., true)`) has its
    /// whole bitmap there (see `redo::vm::bits_only_missing_in_hole`).
    pub image_hole: Option<(u16, u16)>,
}

// SAFETY: a slot owns its page buffer exclusively (no other slot or table points at it), so
// moving the slot to another thread moves the only access to the buffer.
unsafe impl Send for Slot {}

impl Slot {
    pub(crate) fn page(&self) -> &Page {
        // SAFETY: the buffer belongs to this slot alone and lives as long as the arena,
        // which outlives the table's slots.
        unsafe { self.page.as_ref() }
    }
    pub(crate) fn page_mut(&mut self) -> &mut Page {
        // SAFETY: as above; `&mut self` makes the access exclusive.
        unsafe { self.page.as_mut() }
    }
}

/// A page one table gives another by value: its bytes copied out of the giver's arena, so
/// that the receiver keeps no pointer into it (see [`PageTable::insert_copy`]).
pub(crate) struct PageCopy {
    key: PageKey,
    page: Box<Page>,
    kind: Option<PageKind>,
    unreadable: Option<String>,
    image_hole: Option<(u16, u16)>,
}

impl Slot {
    /// The page and what replay knows about it, copied.
    pub(crate) fn to_copy(&self) -> PageCopy {
        PageCopy {
            key: self.key,
            page: Box::new(*self.page()),
            kind: self.kind,
            unreadable: self.unreadable.clone(),
            image_hole: self.image_hole,
        }
    }
}

const EMPTY: u32 = u32::MAX;
const NO_KEY: PageKey = PageKey {
    rel: crate::wal::block::RelFileLocator {
        spc_oid: 0,
        db_oid: 0,
        rel_number: 0,
    },
    fork: crate::wal::block::ForkNumber(0),
    block: 0,
};

#[derive(Clone, Copy)]
struct Entry {
    key: PageKey,
    slot: u32,
    page: *const Page,
}

/// Page keys to slots.
pub(crate) struct PageTable {
    entries: Vec<Entry>,
    mask: usize,
    slots: Vec<Slot>,
    arena: PageArena,
}

// SAFETY: a table is its entries, its slots (each Send, above) and its arena (Send, above);
// it holds no pointer into another table, so moving it moves all access to its pages.
unsafe impl Send for PageTable {}

/// The hash of a page key: the fields combined FxHash-style, then MurmurHash3's finaliser
/// (bucket indexes come from the low bits and must change with the block number).
#[inline]
pub(crate) fn key_hash(key: &PageKey) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = (key.rel.spc_oid as u64) << 32 | key.rel.db_oid as u64;
    h = (h.rotate_left(5) ^ ((key.rel.rel_number as u64) << 8 | key.fork.0 as u64)).wrapping_mul(K);
    h = (h.rotate_left(5) ^ key.block as u64).wrapping_mul(K);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Prefetches the cache line at `p` (a hint; any address is fine).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl PageTable {
    pub(crate) fn new() -> PageTable {
        let cap = 1024;
        PageTable {
            entries: vec![
                Entry {
                    key: NO_KEY,
                    slot: EMPTY,
                    page: std::ptr::null(),
                };
                cap
            ],
            mask: cap - 1,
            slots: Vec::new(),
            arena: PageArena::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Prefetches the bucket where `hash`'s key lives (first step ahead of a lookup).
    #[inline]
    pub(crate) fn prefetch_entry(&self, hash: u64) {
        prefetch(&self.entries[hash as usize & self.mask] as *const Entry as *const u8);
    }

    /// Prefetches the header and first line pointers of the page of `key`, if loaded
    /// (second step; the bucket should be in cache by now).
    #[inline]
    pub(crate) fn prefetch_page(&self, key: &PageKey, hash: u64) {
        let mut i = hash as usize & self.mask;
        loop {
            let e = &self.entries[i];
            if e.slot == EMPTY {
                return;
            }
            if e.key == *key {
                prefetch(e.page as *const u8);
                prefetch((e.page as *const u8).wrapping_add(64));
                // The slot's state is read before the page (whether it is unreadable).
                prefetch(self.slots.as_ptr().wrapping_add(e.slot as usize) as *const u8);
                return;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The slot of `key`.
    #[inline]
    pub(crate) fn find(&self, key: &PageKey, hash: u64) -> Option<u32> {
        let mut i = hash as usize & self.mask;
        loop {
            let e = &self.entries[i];
            if e.slot == EMPTY {
                return None;
            }
            if e.key == *key {
                return Some(e.slot);
            }
            i = (i + 1) & self.mask;
        }
    }

    pub(crate) fn slot(&self, slot: u32) -> &Slot {
        &self.slots[slot as usize]
    }

    pub(crate) fn slot_mut(&mut self, slot: u32) -> &mut Slot {
        &mut self.slots[slot as usize]
    }

    pub(crate) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// A page buffer for a new key; fill it, then [`PageTable::insert`] it (or give it
    /// back with [`PageTable::release`]). The flag tells whether it is already zeroed.
    pub(crate) fn new_page(&mut self) -> (NonNull<Page>, bool) {
        self.arena.alloc()
    }

    pub(crate) fn release(&mut self, page: NonNull<Page>) {
        self.arena.release(page);
    }

    /// See [`PageArena::supply_ahead`].
    pub(crate) fn supply_ahead(&mut self) {
        self.arena.supply_ahead();
    }

    /// Adds `key` (not present) with its page buffer from [`PageTable::new_page`].
    pub(crate) fn insert(&mut self, key: PageKey, hash: u64, page: NonNull<Page>) -> u32 {
        if (self.slots.len() + 1) * 2 > self.entries.len() {
            self.rebuild(self.entries.len() * 2);
        }
        let slot = self.slots.len() as u32;
        self.slots.push(Slot {
            key,
            page,
            kind: None,
            unreadable: None,
            image_hole: None,
        });
        self.place(key, hash, slot, page.as_ptr());
        slot
    }

    fn place(&mut self, key: PageKey, hash: u64, slot: u32, page: *const Page) {
        let mut i = hash as usize & self.mask;
        while self.entries[i].slot != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.entries[i] = Entry { key, slot, page };
    }

    fn rebuild(&mut self, cap: usize) {
        self.entries.clear();
        self.entries.resize(
            cap,
            Entry {
                key: NO_KEY,
                slot: EMPTY,
                page: std::ptr::null(),
            },
        );
        self.mask = cap - 1;
        for i in 0..self.slots.len() {
            let (key, page) = (self.slots[i].key, self.slots[i].page.as_ptr());
            self.place(key, key_hash(&key), i as u32, page);
        }
    }

    /// Keeps the pages `keep` accepts; the others' buffers are recycled.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&PageKey) -> bool) {
        for s in self.take_where(|k| !keep(k)) {
            self.arena.release(s.page);
        }
    }

    /// Removes the pages `take` picks and returns them with their buffers (which stay in
    /// this table's arena): to hand them over to another table ([`PageTable::adopt`]) or to
    /// recycle them ([`PageTable::retain`]).
    pub(crate) fn take_where(&mut self, mut take: impl FnMut(&PageKey) -> bool) -> Vec<Slot> {
        let before = self.slots.len();
        let mut kept = Vec::with_capacity(before);
        let mut taken = Vec::new();
        for s in self.slots.drain(..) {
            if take(&s.key) {
                taken.push(s);
            } else {
                kept.push(s);
            }
        }
        self.slots = kept;
        if !taken.is_empty() {
            let cap = self.entries.len();
            self.rebuild(cap);
        }
        taken
    }

    /// Adds pages another table gave up with [`PageTable::take_where`] (keys not in this
    /// table).
    ///
    /// # Safety
    /// The buffers belong to the giving table's arena: that arena must stay mapped as long
    /// as this table uses them (absorb this table into the giver, or keep the giver alive
    /// longer).
    pub(crate) unsafe fn adopt(&mut self, slots: Vec<Slot>) {
        for s in slots {
            let (key, page) = (s.key, s.page);
            let slot = self.insert(key, key_hash(&key), page);
            let dst = &mut self.slots[slot as usize];
            dst.kind = s.kind;
            dst.unreadable = s.unreadable;
            dst.image_hole = s.image_hole;
        }
    }

    /// Adds a page another table gave up, copied into a buffer of this table's arena (its
    /// key not in this table).
    pub(crate) fn insert_copy(&mut self, c: PageCopy) -> u32 {
        let (page, _) = self.new_page();
        let slot = self.insert(c.key, key_hash(&c.key), page);
        let dst = &mut self.slots[slot as usize];
        dst.page_mut().copy_from_slice(&c.page[..]);
        dst.kind = c.kind;
        dst.unreadable = c.unreadable;
        dst.image_hole = c.image_hole;
        slot
    }

    /// Takes over the pages of `other` (whose keys are not in this table).
    pub(crate) fn absorb(&mut self, mut other: PageTable) {
        let slots = std::mem::take(&mut other.slots);
        let arena = std::mem::replace(&mut other.arena, PageArena::new());
        self.arena.absorb(arena);
        // SAFETY: the buffers' arenas are now this table's (or were already, for pages
        // `other` adopted from this table).
        unsafe { self.adopt(slots) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::block::{ForkNumber, RelFileLocator};

    fn key(rel: u32, block: u32) -> PageKey {
        PageKey {
            rel: RelFileLocator {
                spc_oid: 1663,
                db_oid: 5,
                rel_number: rel,
            },
            fork: ForkNumber::MAIN,
            block,
        }
    }

    #[test]
    fn insert_find_retain_absorb() {
        let mut t = PageTable::new();
        for b in 0..5000u32 {
            let k = key(16384 + b % 3, b);
            assert!(t.find(&k, key_hash(&k)).is_none());
            let (mut p, zeroed) = t.new_page();
            assert!(zeroed);
            // SAFETY: a fresh buffer of the table.
            unsafe { p.as_mut()[0] = b as u8 };
            t.insert(k, key_hash(&k), p);
        }
        assert_eq!(t.len(), 5000);
        for b in 0..5000u32 {
            let k = key(16384 + b % 3, b);
            let s = t.find(&k, key_hash(&k)).expect("present");
            assert_eq!(t.slot(s).page()[0], b as u8);
            assert_eq!(t.slot(s).key, k);
        }
        t.retain(|k| k.rel.rel_number != 16384);
        assert_eq!(t.len(), 5000 - 1667);
        let k0 = key(16384, 0);
        assert!(t.find(&k0, key_hash(&k0)).is_none());
        let k1 = key(16385, 1);
        let s = t.find(&k1, key_hash(&k1)).expect("kept");
        assert_eq!(t.slot(s).page()[0], 1);
        // Recycled buffers are handed out again, not zeroed.
        let (_, zeroed) = t.new_page();
        assert!(!zeroed);
        let mut u = PageTable::new();
        let k = key(99, 7);
        let (mut p, _) = u.new_page();
        // SAFETY: a fresh buffer of the table.
        unsafe { p.as_mut()[1] = 42 };
        u.insert(k, key_hash(&k), p);
        t.absorb(u);
        let s = t.find(&k, key_hash(&k)).expect("absorbed");
        assert_eq!(t.slot(s).page()[1], 42);
    }

    /// Pages come from chunks the supply thread made (and, when it falls behind, from
    /// chunks the arena maps itself): zeroed, distinct and writable across many chunks.
    #[test]
    fn supplied_chunks_give_zeroed_distinct_pages() {
        let mut t = PageTable::new();
        t.supply_ahead();
        let n = 3 * SUPPLY_CHUNK_PAGES + 7;
        for b in 0..n as u32 {
            let k = key(16384, b);
            let (mut p, zeroed) = t.new_page();
            assert!(zeroed);
            // SAFETY: a fresh buffer of the table.
            let page = unsafe { p.as_mut() };
            assert!(page.iter().all(|&x| x == 0), "page {b} not zeroed");
            page[..4].copy_from_slice(&b.to_le_bytes());
            page[BLCKSZ - 4..].copy_from_slice(&b.to_le_bytes());
            t.insert(k, key_hash(&k), p);
        }
        for b in 0..n as u32 {
            let k = key(16384, b);
            let s = t.find(&k, key_hash(&k)).expect("present");
            let page = t.slot(s).page();
            assert_eq!(page[..4], b.to_le_bytes());
            assert_eq!(page[BLCKSZ - 4..], b.to_le_bytes());
        }
    }
}
