//! Which replay thread owns which pages, and how the decoding thread hands pages over.

use super::FastMap;
use crate::redo::pagetable::key_hash;
use crate::redo::smgr::DatabaseDir;
use crate::wal::block::{ForkNumber, PageKey, RelFileLocator};
use crate::wal::record::DecodedRecord;

/// Which replay thread owns which pages. A page's key hash picks one of 256 shares and
/// the shares are dealt to the threads, so each page's records are applied by one thread,
/// in WAL order — the result equals a serial replay. Thread 0 is the one that also decodes
/// the WAL, so it gets a smaller part of the pages. Pages that take a large part of the
/// references (found by sampling the start of the range: pgbench's branches and tellers
/// pages take a third of the records) are dealt one by one, so that they do not end up on
/// the same thread by chance.
#[derive(Clone, Copy)]
pub(super) struct Partition {
    of: [u8; 256],
    /// Shares that hold a hot page.
    has_hot: [bool; 256],
    hot: [(PageKey, u8); MAX_HOT],
    nhot: usize,
}

/// Hot pages dealt individually, at most.
const MAX_HOT: usize = 8;

#[inline]
fn share(hash: u64) -> usize {
    (hash >> 56) as usize
}

impl Partition {
    pub(super) fn serial() -> Partition {
        Partition {
            of: [0; 256],
            has_hot: [false; 256],
            hot: [(NO_PAGE, 0); MAX_HOT],
            nhot: 0,
        }
    }

    /// `threads` threads (at most 64), thread 0 getting `first` shares of 256 and the
    /// others the rest in equal parts; the `hot` pages are dealt in turn, starting with
    /// thread 1.
    pub(super) fn new(threads: usize, first: usize, hot: &[PageKey]) -> Partition {
        let mut p = Partition::serial();
        if threads > 1 {
            let first = first.min(256);
            let rest = (256 - first).max(1);
            for (i, o) in p.of.iter_mut().enumerate().skip(first) {
                *o = (1 + (i - first) * (threads - 1) / rest) as u8;
            }
            for (i, key) in hot.iter().take(MAX_HOT).enumerate() {
                p.hot[i] = (*key, ((i + 1) % threads) as u8);
                p.has_hot[share(key_hash(key))] = true;
                p.nhot = i + 1;
            }
        }
        p
    }

    #[inline]
    pub(super) fn owner(&self, key: &PageKey, hash: u64) -> usize {
        let s = share(hash);
        if self.has_hot[s]
            && let Some((_, t)) = self.hot[..self.nhot].iter().find(|(k, _)| k == key)
        {
            return *t as usize;
        }
        self.of[s] as usize
    }
}

/// Which directory a copied database's pages are owned as. A database copy
/// (`XLOG_DBASE_CREATE_FILE_COPY`) makes every page of the copy the template's page as of the
/// copy, so the thread that holds the template's page must make the copy's: pages of a
/// copied directory are owned as the same page of the directory it was (ultimately) copied
/// from. Every thread sees every copy record, in WAL order, and updates its own aliases
/// there (the decoding thread a second set, for routing): at any point of the WAL all threads
/// agree on every page's owner, and the owner of a copy's pages changes only at a copy,
/// when the copy has no pages yet.
#[derive(Debug, Default, Clone)]
pub(super) struct DatabaseAliases {
    owned_as: FastMap<DatabaseDir, DatabaseDir>,
}

impl DatabaseAliases {
    /// `dst` became a copy of `src`.
    pub(super) fn note_copy(&mut self, dst: DatabaseDir, src: DatabaseDir) {
        let root = self.owned_as.get(&src).copied().unwrap_or(src);
        if root == dst {
            self.owned_as.remove(&dst);
        } else {
            self.owned_as.insert(dst, root);
        }
    }

    /// The thread that owns `key` (whose key hash is `hash`).
    #[inline]
    pub(super) fn owner(&self, part: &Partition, key: &PageKey, hash: u64) -> usize {
        if self.owned_as.is_empty() {
            return part.owner(key, hash);
        }
        match self.owned_as.get(&DatabaseDir::of(&key.rel)) {
            Some(root) => {
                let as_key = root.page(key);
                part.owner(&as_key, key_hash(&as_key))
            }
            None => part.owner(key, hash),
        }
    }
}

const NO_PAGE: PageKey = PageKey {
    rel: RelFileLocator {
        spc_oid: 0,
        db_oid: 0,
        rel_number: 0,
    },
    fork: ForkNumber::MAIN,
    block: 0,
};

/// Records sampled at the start of the range to find hot pages.
pub(super) const HOT_SAMPLE: usize = 8_192;

/// The pages that take at least 2% of the block references of `records` (the first
/// records of the range), hottest first.
pub(super) fn hot_pages<'r>(records: impl Iterator<Item = &'r DecodedRecord>) -> Vec<PageKey> {
    let mut counts: FastMap<PageKey, u32> = FastMap::default();
    let mut total = 0u64;
    for rec in records {
        for b in rec.blocks() {
            *counts.entry(b.page_key()).or_default() += 1;
            total += 1;
        }
    }
    let mut hot: Vec<(u32, PageKey)> = counts
        .into_iter()
        .filter(|(_, c)| *c as u64 * 50 >= total)
        .map(|(k, c)| (c, k))
        .collect();
    hot.sort_by(|a, b| b.cmp(a));
    hot.into_iter().take(MAX_HOT).map(|(_, k)| k).collect()
}

impl Partition {
    /// A partition where thread 0 gave up to `step` of its shares (keeping at least
    /// `keep`) to the other `threads - 1` threads in turn; None when it has no more to give.
    pub(super) fn hand_over(&self, threads: usize, step: usize, keep: usize) -> Option<Partition> {
        let own = self.decoder_shares();
        if threads < 2 || own <= keep {
            return None;
        }
        let mut p = *self;
        let mut given = 0;
        for (i, o) in p.of.iter_mut().enumerate().rev() {
            if given == step.min(own - keep) {
                break;
            }
            if *o == 0 {
                *o = (1 + i % (threads - 1)) as u8;
                given += 1;
            }
        }
        Some(p)
    }

    /// A partition where thread 0 took back up to `step` of thread `from`'s shares, ending
    /// with at most `most`; None when there is nothing to take (hot pages keep their owner).
    pub(super) fn take_back(&self, from: usize, step: usize, most: usize) -> Option<Partition> {
        if from == 0 {
            return None;
        }
        let room = most.saturating_sub(self.decoder_shares()).min(step);
        let mut p = *self;
        let mut taken = 0;
        for o in p.of.iter_mut().filter(|o| **o as usize == from).take(room) {
            *o = 0;
            taken += 1;
        }
        (taken > 0).then_some(p)
    }

    /// Shares thread `t` owns.
    pub(super) fn shares_of(&self, t: usize) -> usize {
        self.of.iter().filter(|o| **o as usize == t).count()
    }

    pub(super) fn decoder_shares(&self) -> usize {
        self.shares_of(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(block: u32) -> PageKey {
        PageKey {
            rel: RelFileLocator {
                spc_oid: 1663,
                db_oid: 5,
                rel_number: 16384,
            },
            fork: ForkNumber::MAIN,
            block,
        }
    }

    #[test]
    fn a_copied_database_s_pages_are_owned_with_the_template_s() {
        let part = Partition::new(4, 64, &[]);
        let dir = |db| DatabaseDir {
            spc_oid: 1663,
            db_oid: db,
        };
        let in_db = |db, block| PageKey {
            rel: RelFileLocator {
                spc_oid: 1663,
                db_oid: db,
                rel_number: 16384,
            },
            ..key(block)
        };
        let mut aliases = DatabaseAliases::default();
        let owner = |a: &DatabaseAliases, k: &PageKey| a.owner(&part, k, key_hash(k));
        aliases.note_copy(dir(7), dir(5));
        // A copy of the copy: owned as the first template's too.
        aliases.note_copy(dir(9), dir(7));
        let mut differs = false;
        for b in 0..64 {
            let template = owner(&aliases, &in_db(5, b));
            assert_eq!(owner(&aliases, &in_db(7, b)), template);
            assert_eq!(owner(&aliases, &in_db(9, b)), template);
            differs |= part.owner(&in_db(7, b), key_hash(&in_db(7, b))) != template;
        }
        assert!(differs, "without the alias some pages would go elsewhere");
        // Database 5 re-created as a copy of 9: its own again.
        aliases.note_copy(dir(5), dir(9));
        assert!(!aliases.owned_as.contains_key(&dir(5)));
    }

    #[test]
    fn hand_over_moves_only_decoder_shares_and_keeps_the_minimum() {
        let hot = [key(0)];
        let start = Partition::new(3, 128, &hot);
        assert_eq!(start.decoder_shares(), 128);
        let mut p = start;
        let mut steps = 0;
        while let Some(next) = p.hand_over(3, 8, 8) {
            for i in 0..256 {
                // A share that was another thread's stays where it was.
                if p.of[i] != 0 {
                    assert_eq!(next.of[i], p.of[i]);
                }
            }
            assert_eq!(next.decoder_shares(), p.decoder_shares() - 8);
            p = next;
            steps += 1;
        }
        assert_eq!(p.decoder_shares(), 8);
        assert_eq!(steps, 15);
        // Both other threads received shares, and hot pages keep their owner.
        assert!(p.of.contains(&1) && p.of.contains(&2));
        let h = key_hash(&hot[0]);
        assert_eq!(p.owner(&hot[0], h), start.owner(&hot[0], h));
        // A serial partition has nobody to hand over to.
        assert!(Partition::serial().hand_over(1, 8, 8).is_none());
    }

    #[test]
    fn take_back_moves_only_the_named_threads_shares_up_to_the_most() {
        let hot = [key(0)];
        let start = Partition::new(3, 8, &hot);
        let (of1, of2) = (start.shares_of(1), start.shares_of(2));
        let back = start.take_back(1, 8, 64).expect("shares to take");
        assert_eq!(back.decoder_shares(), 16);
        assert_eq!((back.shares_of(1), back.shares_of(2)), (of1 - 8, of2));
        for i in 0..256 {
            // Only thread 1's shares moved, and only to thread 0.
            if back.of[i] != start.of[i] {
                assert_eq!((start.of[i], back.of[i]), (1, 0));
            }
        }
        // Never past `most`, never from thread 0 itself, and hot pages stay.
        assert_eq!(
            back.take_back(2, 100, 20).map(|p| p.decoder_shares()),
            Some(20)
        );
        assert!(back.take_back(2, 8, 16).is_none());
        assert!(back.take_back(0, 8, 64).is_none());
        let h = key_hash(&hot[0]);
        assert_eq!(back.owner(&hot[0], h), start.owner(&hot[0], h));
    }
}
