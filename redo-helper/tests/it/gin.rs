//! GIN redo against PostgreSQL 15 itself: the cluster of `redo_verify` (full_page_writes
//! off, wal_consistency_checking = all; wal_compression = zstd here to keep the images
//! small), GIN indexes on int arrays, jsonb (`jsonb_path_ops`), tsvector and pg_trgm, with
//! fastupdate on and off. The workload produces every GIN record type: posting trees that
//! grow, split and lose whole leaves to VACUUM, entry trees that split, pending lists that
//! grow, get a new sublist and are cleaned (`gin_clean_pending_list` and VACUUM).
//! `redo-helper verify --pgdata` must find every replayed page equal to its consistency
//! image and to the data files, and `redo-helper check --pgdata` every page GetPage serves
//! equal to the data files.

use crate::common::{PgCluster, TempDir};
use crate::redo_verify::{checkpoint_and_stop, cluster, run_verify_clean, start_helper};
use crate::support::run_check_clean;

/// The GIN record types as `verify` names them.
const GIN_TYPES: [&str; 9] = [
    "Gin/CREATE_PTREE",
    "Gin/INSERT",
    "Gin/SPLIT",
    "Gin/VACUUM_PAGE",
    "Gin/VACUUM_DATA_LEAF_PAGE",
    "Gin/DELETE_PAGE",
    "Gin/UPDATE_META_PAGE",
    "Gin/INSERT_LISTPAGE",
    "Gin/DELETE_LISTPAGE",
];

/// Loads rows with COPY through a file in the data directory: `heap_multi_insert` logs one
/// record per heap page, where INSERT ... SELECT would log (and image) every row.
pub(crate) fn copy_load(c: &PgCluster, table: &str, select: &str) {
    let file = c.data.join(format!("{table}.copy"));
    let file = file.display();
    c.sql(&format!("COPY ({select}) TO '{file}'"));
    c.sql(&format!("COPY {table} FROM '{file}'"));
}

/// Rows whose index scan (bitmap scan over the GIN index) and sequential scan agree.
pub(crate) fn scans_agree(c: &PgCluster, query: &str) -> String {
    let idx = c.sql(&format!(
        "SET enable_seqscan = off; SET enable_indexscan = on; SET enable_bitmapscan = on; {query}"
    ));
    let seq = c.sql(&format!(
        "SET enable_seqscan = on; SET enable_indexscan = off; SET enable_bitmapscan = off; {query}"
    ));
    assert_eq!(idx, seq, "index and sequential scans differ for {query}");
    idx
}

#[test]
fn gin_redo_matches_consistency_images_and_data_files() {
    let c = cluster();
    c.sql("ALTER SYSTEM SET wal_compression = 'zstd'");
    c.sql("SELECT pg_reload_conf()");
    let dir = TempDir::new("redo-gin");
    let h = start_helper(&c, &dir);
    c.sql("CREATE EXTENSION pg_trgm");

    // Posting trees: two keys with 30,000 rows each (several leaves per tree), and 3,000
    // keys of 20 rows each kept inline in entry-tree tuples. Built on loaded data (the
    // build logs page images), then changed row by row.
    c.sql("CREATE TABLE gp (id int, k int[]) WITH (autovacuum_enabled = off)");
    copy_load(
        &c,
        "gp",
        "SELECT g, ARRAY[g % 2, 100000 + g / 20] FROM generate_series(1, 60000) g",
    );
    c.sql("CREATE INDEX gp_k ON gp USING gin (k) WITH (fastupdate = off)");
    // A new key gets so many rows that its posting list leaves the entry tuple
    // (CREATE_PTREE); new keys past the last fill and split the rightmost entry leaf
    // (SPLIT, and INSERT into the parent finishing it); rows of the two big keys go into
    // their trees' leaves (INSERT with leaf recompression).
    c.sql("INSERT INTO gp SELECT g, ARRAY[7, 200000 + g] FROM generate_series(60001, 63000) g");
    c.sql("INSERT INTO gp SELECT g, ARRAY[g % 2] FROM generate_series(63001, 64000) g");
    // Most rows of the big keys go: VACUUM empties the middle leaves of their posting
    // trees (DELETE_PAGE), trims the others (VACUUM_DATA_LEAF_PAGE), and rewrites entry
    // leaves whose inline posting lists lost items (VACUUM_PAGE).
    c.sql("DELETE FROM gp WHERE id BETWEEN 4000 AND 56000 AND id % 10 <> 3");
    c.sql("VACUUM gp");
    // Rows again after the vacuum, into trimmed leaves and recycled pages.
    c.sql("INSERT INTO gp SELECT g, ARRAY[g % 2, 7] FROM generate_series(64001, 65500) g");

    // Fast update: a pending list of jsonb, tsvector and trigram entries with the
    // smallest limit (64 kB), so that inserts append to its tail (UPDATE_META_PAGE), start
    // new sublists (INSERT_LISTPAGE) and trigger cleanups (DELETE_LISTPAGE).
    c.sql(
        "CREATE TABLE gd (id int, doc jsonb, body text, tsv tsvector) \
         WITH (autovacuum_enabled = off)",
    );
    c.sql(
        "CREATE INDEX gd_doc ON gd USING gin (doc jsonb_path_ops) \
         WITH (fastupdate = on, gin_pending_list_limit = 64)",
    );
    c.sql("CREATE INDEX gd_tsv ON gd USING gin (tsv) WITH (gin_pending_list_limit = 64)");
    c.sql("CREATE INDEX gd_trgm ON gd USING gin (body gin_trgm_ops) WITH (fastupdate = off)");
    let rows = |from: u32, to: u32| {
        format!(
            "INSERT INTO gd SELECT g, \
             jsonb_build_object('k', g % 50, 'tag', 't' || (g % 13), 'n', g), \
             'word' || (g % 300) || ' common', \
             to_tsvector('simple', 'word' || (g % 300) || ' common ' || (g % 7)) \
             FROM generate_series({from}, {to}) g"
        )
    };
    c.sql(&rows(1, 2500));
    c.sql("SELECT gin_clean_pending_list('gd_doc')");
    c.sql(&rows(2501, 3500));
    c.sql("UPDATE gd SET doc = doc || '{\"u\": 1}', tsv = tsv || 'updated'::tsvector WHERE id % 9 = 0");
    c.sql("DELETE FROM gd WHERE id % 5 = 0");
    // VACUUM cleans the pending lists too.
    c.sql("VACUUM gd");
    c.sql(&rows(3501, 4000));

    for q in [
        "SELECT count(*) FROM gp WHERE k @> ARRAY[1]",
        "SELECT count(*) FROM gp WHERE k @> ARRAY[7]",
        "SELECT count(*) FROM gp WHERE k && ARRAY[100005, 100300, 200017]",
        "SELECT count(*) FROM gd WHERE doc @> '{\"tag\": \"t3\"}'",
        "SELECT count(*) FROM gd WHERE tsv @@ 'word17 & common'::tsquery",
        "SELECT count(*) FROM gd WHERE body LIKE '%ord29%'",
    ] {
        let n = scans_agree(&c, q);
        assert!(
            n.trim().parse::<u64>().unwrap_or(0) > 0,
            "{q} found nothing"
        );
    }
    c.sql("VACUUM");
    checkpoint_and_stop(&c, h);

    let run = run_verify_clean(&dir.path().join("helper"), &c.data);
    let counts = run.every_type_replayed(&GIN_TYPES);
    println!("GIN record types replayed and checked: {counts:?}");

    // GetPage for every page the helper serves, against the data files.
    run_check_clean(&dir.path().join("helper"), &c.data, 1000);
}
