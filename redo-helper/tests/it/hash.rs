//! Hash index redo against PostgreSQL 15 itself: the cluster of `redo_verify`
//! (full_page_writes off, wal_consistency_checking = all; wal_compression = zstd here to
//! keep the images small), hash indexes built on empty tables (INIT_META_PAGE,
//! INIT_BITMAP_PAGE) that then grow through hundreds of bucket splits past the first
//! multi-phase splitpoint (SPLIT_ALLOCATE_PAGE, SPLIT_PAGE, SPLIT_COMPLETE, and the
//! cleanup of the old bucket right after each split: DELETE, SPLIT_CLEANUP), long overflow
//! chains of a few duplicated keys (ADD_OVFL_PAGE, recycled pages among them), deletes and
//! VACUUM (DELETE, MOVE_PAGE_CONTENTS, SQUEEZE_PAGE, UPDATE_META_PAGE), and index scans that
//! mark dead tuples LP_DEAD followed by inserts into the full page (VACUUM_ONE_PAGE).
//! `redo-helper verify --pgdata` must find every replayed page equal to its consistency
//! image and to the data files, and `redo-helper check --pgdata` every page GetPage serves
//! equal to the data files.
//!
//! Not provoked: ADD_OVFL_PAGE's new bitmap page (block 3), which takes an index with
//! more than 32,768 overflow pages (one bitmap page's 4096 bytes of bits), about 256 MB of
//! overflow pages.

use crate::common::{PgCluster, TempDir, pg_waldump};
use crate::gin::copy_load;
use crate::redo_verify::{checkpoint_and_stop, cluster, run_verify_clean, start_helper};
use crate::support::run_check_clean;
use std::time::Instant;

/// The hash record types as `verify` names them.
const HASH_TYPES: [&str; 13] = [
    "Hash/INIT_META_PAGE",
    "Hash/INIT_BITMAP_PAGE",
    "Hash/INSERT",
    "Hash/ADD_OVFL_PAGE",
    "Hash/SPLIT_ALLOCATE_PAGE",
    "Hash/SPLIT_PAGE",
    "Hash/SPLIT_COMPLETE",
    "Hash/MOVE_PAGE_CONTENTS",
    "Hash/SQUEEZE_PAGE",
    "Hash/DELETE",
    "Hash/SPLIT_CLEANUP",
    "Hash/UPDATE_META_PAGE",
    "Hash/VACUUM_ONE_PAGE",
];

/// `query` through a plain index scan (the scan that marks dead tuples LP_DEAD) and by a
/// sequential scan: the same rows.
fn scans_agree(c: &PgCluster, query: &str) -> String {
    let idx = c.sql(&format!(
        "SET enable_seqscan = off; SET enable_bitmapscan = off; {query}"
    ));
    let seq = c.sql(&format!(
        "SET enable_indexscan = off; SET enable_bitmapscan = off; {query}"
    ));
    assert_eq!(idx, seq, "index and sequential scans differ for {query}");
    idx
}

/// How many pages of the hash index `index` have each type (`hash_page_type`).
fn page_types(c: &PgCluster, index: &str) -> String {
    c.sql(&format!(
        "SELECT string_agg(t || ' ' || n, ', ' ORDER BY t) FROM (SELECT \
         hash_page_type(get_raw_page('{index}', b::int)) AS t, count(*) AS n \
         FROM generate_series(0, pg_relation_size('{index}') / 8192 - 1) b GROUP BY 1) s"
    ))
}

/// Record variants that take other paths through the redo, counted in pg_waldump's
/// descriptions of the helper's archive: recycled overflow pages, the primary bucket page
/// registered only for its cleanup lock, dead-tuple hints cleared by VACUUM, splits that
/// start a new doubling or splitpoint phase.
fn record_variants(wal: &std::path::Path) -> Vec<(String, usize)> {
    let (lines, _) = pg_waldump(wal, &["-s", "0/2000000", "-r", "Hash"]);
    [
        ("ADD_OVFL_PAGE", "bmpage_found T"),
        ("ADD_OVFL_PAGE", "bmpage_found F"),
        ("MOVE_PAGE_CONTENTS", "is_primary F"),
        ("MOVE_PAGE_CONTENTS", "is_primary T"),
        ("SQUEEZE_PAGE", "is_primary F"),
        ("SQUEEZE_PAGE", "is_primary T"),
        ("SQUEEZE_PAGE", "ntups 0,"),
        ("DELETE", "is_primary F"),
        ("DELETE", "is_primary T"),
        ("DELETE", "clear_dead_marking T"),
        ("SPLIT_ALLOCATE_PAGE", "meta_page_masks_updated T"),
        ("SPLIT_ALLOCATE_PAGE", "issplitpoint_changed T"),
    ]
    .iter()
    .map(|(rtype, detail)| {
        let desc = format!("desc: {rtype} ");
        let n = lines
            .iter()
            .filter(|l| l.contains(&desc) && l.contains(detail))
            .count();
        (format!("{rtype} {detail}"), n)
    })
    .collect()
}

#[test]
fn hash_redo_matches_consistency_images_and_data_files() {
    let started = Instant::now();
    let c = cluster();
    c.sql("ALTER SYSTEM SET wal_compression = 'zstd'");
    c.sql("SELECT pg_reload_conf()");
    c.sql("CREATE EXTENSION pageinspect");
    let dir = TempDir::new("redo-hash");
    let h = start_helper(&c, &dir);

    // Growth: an index created on the empty table (two buckets) with the smallest fill
    // factor (40 tuples a bucket), then 24,000 distinct keys: about 600 buckets, past the
    // single-phase splitpoints (512 buckets), each split logging its new pages whole and
    // cleaning the old bucket.
    c.sql("CREATE TABLE hg (id int, k int) WITH (autovacuum_enabled = off)");
    c.sql("CREATE INDEX hg_k ON hg USING hash (k) WITH (fillfactor = 10)");
    copy_load(&c, "hg", "SELECT g, g FROM generate_series(1, 24000) g");

    // A build on a loaded table: the metapage sized for the estimated tuples (2,000 at 40 a
    // bucket: 64 buckets, logged as page images) and the build's inserts.
    c.sql("CREATE TABLE hs AS SELECT g AS id FROM generate_series(1, 2000) g");
    c.sql("CREATE INDEX hs_id ON hs USING hash (id) WITH (fillfactor = 10)");

    // Overflow chains: four keys with 3,000 rows each, a bucket page holding about 400.
    c.sql("CREATE TABLE hd (id int, k int) WITH (autovacuum_enabled = off)");
    c.sql("CREATE INDEX hd_k ON hd USING hash (k)");
    copy_load(&c, "hd", "SELECT g, g % 4 FROM generate_series(1, 12000) g");

    // Dead tuples marked by an index scan: a third of key 1's rows go, the scan over its
    // chain marks them LP_DEAD (and the pages LH_PAGE_HAS_DEAD_TUPLES), and inserts that
    // find the bucket's first page full remove them first (VACUUM_ONE_PAGE).
    c.sql("DELETE FROM hd WHERE k = 1 AND id % 3 = 0");
    scans_agree(&c, "SELECT count(*) FROM hd WHERE k = 1");
    c.sql("INSERT INTO hd SELECT g, 1 FROM generate_series(12001, 12600) g");

    // VACUUM: half of every chain goes (DELETE), the chains are squeezed (tuples move to
    // earlier pages, emptied overflow pages are freed), the tuple count is updated.
    c.sql("DELETE FROM hd WHERE id % 2 = 0");
    c.sql("DELETE FROM hg WHERE id % 5 <> 0");
    c.sql("VACUUM hd");
    c.sql("VACUUM hg");
    // New rows reuse the freed overflow pages (ADD_OVFL_PAGE with the page found in the
    // bitmap).
    copy_load(
        &c,
        "hd",
        "SELECT g, g % 4 FROM generate_series(20001, 24000) g",
    );
    copy_load(&c, "hg", "SELECT g, g FROM generate_series(30001, 31000) g");

    for q in [
        "SELECT count(*) FROM hd WHERE k = 1",
        "SELECT count(*) FROM hd WHERE k = 3",
        "SELECT count(*) FROM hg WHERE k = 15",
        "SELECT count(*) FROM hg WHERE k = 30500",
        "SELECT count(*) FROM hs WHERE id = 1999",
    ] {
        let n = scans_agree(&c, q);
        assert!(
            n.trim().parse::<u64>().unwrap_or(0) > 0,
            "{q} found nothing"
        );
    }
    assert_eq!(
        scans_agree(&c, "SELECT count(*) FROM hg WHERE k = 16"),
        "0",
        "a deleted key"
    );
    println!("hg_k pages: {}", page_types(&c, "hg_k"));
    println!("hd_k pages: {}", page_types(&c, "hd_k"));
    println!("hs_id pages: {}", page_types(&c, "hs_id"));
    c.sql("VACUUM");
    checkpoint_and_stop(&c, h);
    let workload = started.elapsed();
    let variants = record_variants(&dir.path().join("helper").join("wal"));
    println!("hash record variants: {variants:?}");
    for (variant, n) in &variants {
        assert!(*n > 0, "the workload did not produce {variant}");
    }

    let run = run_verify_clean(&dir.path().join("helper"), &c.data);
    let counts = run.every_type_replayed(&HASH_TYPES);
    println!("hash record types replayed and checked: {counts:?}");
    let verified = started.elapsed();

    // GetPage for every page the helper serves, against the data files.
    run_check_clean(&dir.path().join("helper"), &c.data, 1000);
    println!(
        "timings: workload {workload:?}, verify {:?}, check {:?}",
        verified - workload,
        started.elapsed() - verified
    );
}
