//! GiST redo against PostgreSQL 15 itself: the cluster of `redo_verify` (full_page_writes
//! off, wal_consistency_checking = all; wal_compression = zstd here to keep the images
//! small), GiST indexes on points and boxes (buffered builds), ranges, tsvector (a wide
//! signature, for a three-level tree), pg_trgm's gist_trgm_ops and btree_gist, and an
//! `EXCLUDE USING gist` constraint with conflicting inserts. The workload produces every
//! GiST record type PostgreSQL writes with wal_level = replica: inserts and their page
//! splits (root splits and splits of internal pages finishing a child's split), killed
//! tuples removed by an insert into a full leaf (DELETE), leaves emptied by VACUUM
//! (PAGE_DELETE) and recycled by later splits (PAGE_REUSE).
//! `redo-helper verify --pgdata` must find every replayed page equal to its consistency
//! image and to the data files, and `redo-helper check --pgdata` every page GetPage serves
//! equal to the data files.

use crate::common::{TempDir, waldump_archive};
use crate::gin::{copy_load, scans_agree};
use crate::redo_verify::{checkpoint_and_stop, cluster, run_verify_clean, start_helper};
use crate::support::run_check_clean;
use std::path::Path;
use std::time::Instant;

/// The GiST record types as `verify` names them, but ASSIGN_LSN: `gistGetFakeLSN` writes it
/// only for a permanent relation that skips WAL (wal_level = minimal, relation created in
/// the same transaction); the helper streams from wal_level >= replica, where every
/// permanent relation is WAL-logged, so the record cannot occur in its WAL.
const GIST_TYPES: [&str; 5] = [
    "Gist/PAGE_UPDATE",
    "Gist/DELETE",
    "Gist/PAGE_REUSE",
    "Gist/PAGE_SPLIT",
    "Gist/PAGE_DELETE",
];

/// The shapes of the PAGE_SPLIT records in the helper's WAL archive (pg_waldump's view):
/// (root splits, splits into more than two pages, splits that also finish the split of
/// the left child, block 0).
fn split_shapes(wal: &Path) -> (usize, usize, usize) {
    let lines = waldump_archive(wal, "Gist");
    let (mut root, mut wide, mut finishing) = (0, 0, 0);
    for l in lines.iter().filter(|l| l.contains("desc: PAGE_SPLIT")) {
        let blocks: Vec<&str> = l.split(", blkref #").skip(1).collect();
        if blocks
            .iter()
            .any(|b| b.starts_with("1: ") && b.split(' ').nth(4) == Some("0"))
        {
            root += 1;
        }
        if !l.contains("splits to 2 pages") {
            wide += 1;
        }
        if blocks.iter().any(|b| b.starts_with("0: ")) {
            finishing += 1;
        }
    }
    (root, wide, finishing)
}

#[test]
fn gist_redo_matches_consistency_images_and_data_files() {
    let started = Instant::now();
    let c = cluster();
    c.sql("ALTER SYSTEM SET wal_compression = 'zstd'");
    c.sql("SELECT pg_reload_conf()");
    let dir = TempDir::new("redo-gist");
    let h = start_helper(&c, &dir);
    c.sql("CREATE EXTENSION btree_gist");
    c.sql("CREATE EXTENSION pg_trgm");

    // Points, boxes and ranges: buffered builds over loaded rows (the build logs page
    // images), then rows index by index (PAGE_UPDATE, PAGE_SPLIT with the F_FOLLOW_RIGHT
    // downlink insertion into the parent).
    c.sql("CREATE TABLE gb (id int, p point, b box, r int4range) WITH (autovacuum_enabled = off)");
    let rows = |from: u32, to: u32, x: &str| {
        format!(
            "SELECT g, point({x}, g % 100), box(point({x}, g % 100), point({x} + 3, g % 100 + 2)), \
             int4range(g, g + g % 17 + 1) FROM generate_series({from}, {to}) g"
        )
    };
    copy_load(&c, "gb", &rows(1, 20000, "g"));
    c.sql("CREATE INDEX gb_p ON gb USING gist (p) WITH (buffering = on)");
    c.sql("CREATE INDEX gb_b ON gb USING gist (b) WITH (buffering = on)");
    c.sql("CREATE INDEX gb_r ON gb USING gist (r)");
    // Every other row of x 2000..2600 goes; plain index scans over them mark their leaf
    // tuples LP_DEAD (gistkillitems, no WAL). The buffered build left those leaves about
    // 30% full (83 points); 2,000 new rows there fill them, and gistplacetopage prunes the
    // dead tuples of a full leaf (DELETE) before it would split it.
    c.sql("DELETE FROM gb WHERE id BETWEEN 2000 AND 2600 AND id % 2 = 0");
    for _ in 0..2 {
        c.sql(
            "SET enable_seqscan = off; SET enable_bitmapscan = off; \
             SELECT sum(id) FROM gb WHERE p <@ box '((1990,0),(2610,100))'",
        );
    }
    copy_load(&c, "gb", &rows(30001, 32000, "2000 + g % 600"));
    // A contiguous stretch of x empties whole leaves: VACUUM deletes them (PAGE_DELETE).
    // Once their deleteXid is older than every snapshot, the next VACUUM puts them in the
    // FSM, and the splits of new rows take them (PAGE_REUSE).
    c.sql("DELETE FROM gb WHERE id BETWEEN 8000 AND 12000");
    c.sql("VACUUM gb");
    c.sql("SELECT txid_current()");
    c.sql("SELECT txid_current()");
    c.sql("VACUUM gb");
    copy_load(&c, "gb", &rows(20001, 23000, "g"));

    // tsvector with a 1000-byte signature (seven downlinks a page: internal pages split,
    // the root splits twice), pg_trgm and btree_gist on an initially empty table.
    c.sql("CREATE TABLE gd (id int, tsv tsvector, body text) WITH (autovacuum_enabled = off)");
    c.sql("CREATE INDEX gd_tsv ON gd USING gist (tsv tsvector_ops (siglen = 1000))");
    c.sql("CREATE INDEX gd_trgm ON gd USING gist (body gist_trgm_ops)");
    c.sql("CREATE INDEX gd_id ON gd USING gist (id)");
    copy_load(
        &c,
        "gd",
        "SELECT g, to_tsvector('simple', 'w' || (g * 7919 % 3001) || ' w' || (g % 97) || ' common'), \
         'body ' || md5(g::text) FROM generate_series(1, 3000) g ORDER BY md5(g::text)",
    );

    // An exclusion constraint (btree_gist's int4 = and range &&): conflicting rows are
    // inserted into the index, then refused, in subtransactions.
    c.sql(
        "CREATE TABLE rsv (room int, during int4range, \
         EXCLUDE USING gist (room WITH =, during WITH &&))",
    );
    c.sql(
        "INSERT INTO rsv SELECT g % 50, int4range(g / 50 * 10, g / 50 * 10 + 5) \
         FROM generate_series(1, 2000) g",
    );
    c.sql("CREATE TABLE rsv_conflicts (n int)");
    c.sql(
        "DO $$ DECLARE n int := 0; BEGIN \
         FOR i IN 1..300 LOOP \
           BEGIN INSERT INTO rsv VALUES (i % 50, int4range(i * 7, i * 7 + 12)); \
           EXCEPTION WHEN exclusion_violation THEN n := n + 1; END; \
         END LOOP; INSERT INTO rsv_conflicts VALUES (n); END $$",
    );
    let conflicts: u32 = c
        .sql("SELECT n FROM rsv_conflicts")
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        conflicts > 0 && conflicts < 300,
        "{conflicts} of 300 inserts conflicted"
    );

    for q in [
        "SELECT count(*) FROM gb WHERE p <@ box '((2500,0),(3500,50))'",
        "SELECT count(*) FROM gb WHERE p <@ box '((19000,0),(22000,100))'",
        "SELECT count(*) FROM gb WHERE b && box '((5000,10),(7000,20))'",
        "SELECT count(*) FROM gb WHERE r @> 21000",
        "SELECT count(*) FROM gd WHERE tsv @@ 'w17 & common'::tsquery",
        "SELECT count(*) FROM gd WHERE body LIKE '%a1b%'",
        "SELECT count(*) FROM gd WHERE id BETWEEN 100 AND 900",
        "SELECT count(*) FROM rsv WHERE room = 7 AND during && int4range(100, 2000)",
    ] {
        let n = scans_agree(&c, q);
        assert!(
            n.trim().parse::<u64>().unwrap_or(0) > 0,
            "{q} found nothing"
        );
    }
    c.sql("VACUUM");
    checkpoint_and_stop(&c, h);
    let workload_done = started.elapsed();

    let run = run_verify_clean(&dir.path().join("helper"), &c.data);
    let counts = run.every_type_replayed(&GIST_TYPES);
    println!(
        "GiST record types replayed and checked: {counts:?} (ASSIGN_LSN: {}); \
         workload {workload_done:.1?}, verify {:.1?}",
        run.type_count("Gist/ASSIGN_LSN"),
        started.elapsed() - workload_done
    );

    // Splits of every shape were among the records verified.
    let (root, wide, finishing) = split_shapes(&dir.path().join("helper").join("wal"));
    println!(
        "PAGE_SPLIT: {root} root splits, {wide} into more than two pages, \
         {finishing} finishing a child's split"
    );
    assert!(root > 0 && wide > 0 && finishing > 0);

    // GetPage for every page the helper serves, against the data files.
    run_check_clean(&dir.path().join("helper"), &c.data, 1000);
    println!("GiST test: {:.1?} in all", started.elapsed());
}
