//! Which helper shard owns a page.
//!
//! With `--shards N` the pages of one cluster are split over N helpers. A page belongs to a
//! shard by a hash of (tablespace, database, relation, block stripe), where a stripe is
//! `stripe_blocks` consecutive blocks: neighbouring blocks, which a scan or an index range
//! reads together, stay on one shard. The fork is left out on purpose, so that a relation's
//! main, FSM, VM and init pages of the same block numbers land together (a VM page's block
//! number is not its heap block's, so a heap stripe and the VM page covering it may still sit
//! on different shards: each record is indexed by every shard that owns one of its blocks).
//!
//! The hash is FNV-1a (64 bit) over the little-endian bytes of the four numbers, finished
//! with splitmix64's mixer (FNV-1a's low bits depend only on the low bits of the input bytes,
//! so a plain modulo by a power of two would split by the parity of the stripe). It must
//! never change: every shard, every router and a remote `repair` must agree on the owner of
//! a page, across versions of the helper, for as long as a bucket written with it exists.
//! Changing the number of shards of a running deployment is not supported (the map is stored
//! in the bucket and a helper with another one is refused).

use crate::wal::block::PageKey;
use std::path::{Path, PathBuf};

/// Default stripe: 128 blocks (1 MB of a relation with 8 KB pages).
pub(crate) const DEFAULT_STRIPE_BLOCKS: u32 = 128;

/// How pages are spread over shards, and which shard this helper is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ShardMap {
    /// Number of shards (1: unsharded, this helper owns every page).
    pub shards: u32,
    /// This helper's shard, 0-based, below `shards`.
    pub shard: u32,
    /// Blocks per stripe, at least 1.
    pub stripe_blocks: u32,
}

/// A shard map that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ShardMapError {
    #[error("--shards must be at least 1 (got {0})")]
    NoShards(u32),
    #[error("--shard {shard} is out of range for --shards {shards} (shards are numbered from 0)")]
    ShardOutOfRange { shard: u32, shards: u32 },
    #[error("--stripe-blocks must be at least 1")]
    EmptyStripe,
    #[error(
        "data directory {dir} belongs to shard {theirs} (shard.json), not to {ours}: give each shard its own data directory"
    )]
    OtherShard {
        dir: PathBuf,
        theirs: String,
        ours: String,
    },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

impl std::fmt::Display for ShardMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} (stripes of {} blocks)",
            self.shard, self.shards, self.stripe_blocks
        )
    }
}

/// The shard map a data directory was written with, in `shard.json` (absent: unsharded).
/// Offline commands (`check`, `repair`) read it so that they consider the pages the shard
/// owns, and `run` refuses to reuse one shard's directory for another.
pub(crate) fn shard_file(data_dir: &Path) -> PathBuf {
    data_dir.join("shard.json")
}

impl Default for ShardMap {
    fn default() -> Self {
        ShardMap::UNSHARDED
    }
}

impl ShardMap {
    /// One helper owns every page.
    pub(crate) const UNSHARDED: ShardMap = ShardMap {
        shards: 1,
        shard: 0,
        stripe_blocks: DEFAULT_STRIPE_BLOCKS,
    };

    pub(crate) fn new(shards: u32, shard: u32, stripe_blocks: u32) -> Result<Self, ShardMapError> {
        if shards == 0 {
            return Err(ShardMapError::NoShards(shards));
        }
        if shard >= shards {
            return Err(ShardMapError::ShardOutOfRange { shard, shards });
        }
        if stripe_blocks == 0 {
            return Err(ShardMapError::EmptyStripe);
        }
        Ok(ShardMap {
            shards,
            shard,
            stripe_blocks,
        })
    }

    pub(crate) fn is_sharded(&self) -> bool {
        self.shards > 1
    }

    /// The shard that owns `key`.
    pub(crate) fn owner(&self, key: &PageKey) -> u32 {
        if self.shards <= 1 {
            return 0;
        }
        let stripe = key.block / self.stripe_blocks.max(1);
        let hash = fnv1a_64(&[key.rel.spc_oid, key.rel.db_oid, key.rel.rel_number, stripe]);
        (mix64(hash) % u64::from(self.shards)) as u32
    }

    /// Whether this helper's shard owns `key`.
    pub(crate) fn owns(&self, key: &PageKey) -> bool {
        self.owner(key) == self.shard
    }

    /// The map `data_dir` was written with (unsharded when it has no `shard.json`).
    pub(crate) fn load(data_dir: &Path) -> Result<ShardMap, ShardMapError> {
        let path = shard_file(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ShardMap::UNSHARDED),
            Err(e) => {
                return Err(ShardMapError::File {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let map: ShardMap = serde_json::from_str(&text).map_err(|e| ShardMapError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        ShardMap::new(map.shards, map.shard, map.stripe_blocks).map_err(|e| ShardMapError::File {
            path,
            reason: e.to_string(),
        })
    }

    /// Records this map in `data_dir` (`run`), refusing a directory written by another shard
    /// or with another split.
    pub(crate) fn store(&self, data_dir: &Path) -> Result<(), ShardMapError> {
        let path = shard_file(data_dir);
        if path.exists() {
            let theirs = ShardMap::load(data_dir)?;
            if theirs != *self {
                return Err(ShardMapError::OtherShard {
                    dir: data_dir.to_path_buf(),
                    theirs: theirs.to_string(),
                    ours: self.to_string(),
                });
            }
            return Ok(());
        }
        if !self.is_sharded() {
            // Unsharded directories keep today's layout (no shard.json).
            return Ok(());
        }
        let json = serde_json::to_vec_pretty(self).map_err(|e| ShardMapError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        super::write_atomic(&path, &json).map_err(|e| ShardMapError::File {
            path,
            reason: e.to_string(),
        })
    }
}

/// FNV-1a, 64 bit, over the little-endian bytes of `words`.
fn fnv1a_64(words: &[u32]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    for word in words {
        for byte in word.to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash
}

/// splitmix64's finaliser: every output bit depends on every input bit.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::block::{ForkNumber, RelFileLocator};

    fn key(rel: u32, fork: ForkNumber, block: u32) -> PageKey {
        PageKey {
            rel: RelFileLocator {
                spc_oid: 1663,
                db_oid: 5,
                rel_number: rel,
            },
            fork,
            block,
        }
    }

    #[test]
    fn unsharded_owns_everything() {
        let map = ShardMap::UNSHARDED;
        assert!(map.owns(&key(16384, ForkNumber::MAIN, 12345)));
        assert_eq!(map.owner(&key(1, ForkNumber::VM, 0)), 0);
    }

    #[test]
    fn a_stripe_and_its_forks_stay_together() {
        let map = ShardMap::new(3, 0, 128).unwrap();
        let first = map.owner(&key(16384, ForkNumber::MAIN, 128));
        for block in 128..256 {
            assert_eq!(map.owner(&key(16384, ForkNumber::MAIN, block)), first);
            assert_eq!(map.owner(&key(16384, ForkNumber::FSM, block)), first);
        }
    }

    #[test]
    fn the_hash_is_fixed() {
        // Known FNV-1a 64 values: a changed hash would move pages between shards of
        // existing buckets.
        assert_eq!(fnv1a_64(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(
            fnv1a_64(&[1663, 5, 16384, 0]),
            fnv1a_64(&[1663, 5, 16384, 0])
        );
        let map = ShardMap::new(2, 0, 128).unwrap();
        let owners: Vec<u32> = (0..8)
            .map(|s| map.owner(&key(16384, ForkNumber::MAIN, s * 128)))
            .collect();
        assert_eq!(owners, GOLDEN_OWNERS);
    }

    /// Owners of stripes 0..8 of relation 1663/5/16384 with 2 shards, recorded once.
    const GOLDEN_OWNERS: [u32; 8] = [0, 1, 1, 0, 1, 0, 0, 0];

    #[test]
    fn pages_spread_over_shards() {
        let map = ShardMap::new(2, 0, 1).unwrap();
        let owned = (0..10_000)
            .filter(|b| map.owns(&key(16384, ForkNumber::MAIN, *b)))
            .count();
        assert!((4_000..6_000).contains(&owned), "{owned}");
    }

    #[test]
    fn a_data_directory_keeps_its_shard() {
        let dir = std::env::temp_dir().join(format!("rh_shard_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(ShardMap::load(&dir).unwrap(), ShardMap::UNSHARDED);
        // Unsharded directories keep today's layout.
        ShardMap::UNSHARDED.store(&dir).unwrap();
        assert!(!shard_file(&dir).exists());
        let one = ShardMap::new(2, 1, 8).unwrap();
        one.store(&dir).unwrap();
        assert_eq!(ShardMap::load(&dir).unwrap(), one);
        one.store(&dir).unwrap();
        for other in [
            ShardMap::new(2, 0, 8).unwrap(),
            ShardMap::new(3, 1, 8).unwrap(),
            ShardMap::UNSHARDED,
        ] {
            assert!(matches!(
                other.store(&dir),
                Err(ShardMapError::OtherShard { .. })
            ));
        }
        std::fs::write(
            shard_file(&dir),
            "{\"shards\": 2, \"shard\": 5, \"stripe_blocks\": 8}",
        )
        .unwrap();
        assert!(matches!(
            ShardMap::load(&dir),
            Err(ShardMapError::File { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_maps_are_refused() {
        assert_eq!(ShardMap::new(0, 0, 1), Err(ShardMapError::NoShards(0)));
        assert_eq!(
            ShardMap::new(2, 2, 1),
            Err(ShardMapError::ShardOutOfRange {
                shard: 2,
                shards: 2
            })
        );
        assert_eq!(ShardMap::new(2, 1, 0), Err(ShardMapError::EmptyStripe));
    }
}
