//! Generic WAL (resource manager 20) replayed by the Rust redo, with two access methods
//! writing it: contrib `bloom` and `rum` (Debian package `postgresql-15-rum`, a GIN-like
//! inverted index whose pages hold posting lists and posting trees). A cluster with
//! full_page_writes off and wal_consistency_checking = all, one index of each in the base
//! backup and one built while the helper streams, under inserts, updates, deletes and
//! VACUUM. After CHECKPOINT the helper serves every bloom and rum page (GetPage over HTTP,
//! replaying the deltas) as the data files have them; `redo-helper check` finds every page
//! it serves equal to the data files; `redo-helper verify` finds every page after every
//! Generic record it replays equal to its consistency image (masked as `generic_mask`
//! does) and to the data files, with no page unreadable. rum index scans then return what
//! sequential scans return.

use crate::common::{PgCluster, TempDir};
use crate::redo_verify::{checkpoint_and_catch_up, cluster, run_verify, start_helper};
use crate::support::{http, run_check};
use std::os::unix::fs::FileExt;

/// The number after `label` in `line` ("Generic/Generic 123, ...").
fn count_after(line: &str, label: &str) -> Option<u64> {
    let rest = &line[line.find(label)? + label.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `generic_mask`: LSN, checksum and the hole between pd_lower and pd_upper.
fn generic_mask(page: &mut [u8]) {
    page[..10].fill(0);
    let lower = u16::from_le_bytes([page[12], page[13]]) as usize;
    let upper = u16::from_le_bytes([page[14], page[15]]) as usize;
    assert!(
        lower <= upper && upper <= page.len(),
        "page pointers {lower} {upper}"
    );
    page[lower..upper].fill(0);
}

/// A document of row `g` for the rum table, as SQL over the column or expression `g`:
/// `common` in every row (a posting tree of thousands of items), `wN` in a seventh
/// (posting trees that grow, split and lose items to VACUUM), `xN` in a 211th (posting
/// lists inline in entry-tree leaves), `uN` unique (many entries: entry-tree splits).
fn rum_doc(g: &str) -> String {
    format!(
        "to_tsvector('simple', 'common w' || ({g} % 7) || ' x' || ({g} % 211) || ' u' || {g} \
         || CASE WHEN {g} % 3 = 0 THEN ' third' ELSE '' END)"
    )
}

/// Queries whose answers over the rum table must not depend on the plan.
const RUM_QUERIES: [&str; 5] = [
    "tsv @@ 'common'",
    "tsv @@ 'w3 & third'",
    "tsv @@ 'x17 | x200'",
    "tsv @@ 'u4321'",
    "tsv @@ '!w2 & x5'",
];

/// `count:sum` of the ids of the rows matching `cond` under the given plan settings, and
/// the plan.
fn rum_answer(c: &PgCluster, settings: &str, cond: &str) -> (String, String) {
    let q = format!("SELECT count(*) || ':' || coalesce(sum(id), 0) FROM r WHERE {cond}");
    let plan = c.sql(&format!("{settings} EXPLAIN (COSTS OFF) {q}"));
    let rows = c.sql(&format!("{settings} {q}"));
    (rows, plan)
}

#[test]
fn bloom_and_rum_indexes_generic_wal_replay_exactly() {
    let c = cluster();
    let dir = TempDir::new("generic-wal");
    // A bloom index that is in the base backup: its later deltas apply to base pages.
    c.sql("CREATE EXTENSION bloom");
    c.sql("CREATE TABLE b (id int, i1 int, i2 int, t text)");
    c.sql("INSERT INTO b SELECT g, g % 97, g % 13, md5(g::text) FROM generate_series(1, 3000) g");
    c.sql("CREATE INDEX b_bloom ON b USING bloom (i1, i2, t) WITH (length = 80)");
    // A rum index in the base backup too. rum's pages carry no page id (rum.h), so the
    // helper can only tell them apart by the Generic records that change them.
    c.sql("CREATE EXTENSION rum");
    c.sql("CREATE TABLE r (id int, tsv tsvector, ts timestamptz)");
    c.sql(&format!(
        "INSERT INTO r SELECT g, {}, '2026-01-01'::timestamptz + g * interval '1 minute' \
         FROM generate_series(1, 1500) g",
        rum_doc("g")
    ));
    c.sql("CREATE INDEX r_rum ON r USING rum (tsv rum_tsvector_ops)");
    let mut h = start_helper(&c, &dir);
    // A second rum index built while streaming, with a timestamp attached to each posting
    // item (addInfo: rum_tsvector_addon_ops), so the item format differs from r_rum's.
    c.sql(
        "CREATE INDEX r_rum_ts ON r USING rum (tsv rum_tsvector_addon_ops, ts) \
         WITH (attach = 'ts', to = 'tsv')",
    );
    // A second bloom index built while streaming: its pages come as GENERIC_XLOG_FULL_IMAGE
    // images, then deltas.
    c.sql("CREATE INDEX b_bloom2 ON b USING bloom (id, i1)");
    c.sql(
        "INSERT INTO b SELECT g, g % 97, g % 13, md5(g::text) FROM generate_series(3001, 15000) g",
    );
    c.sql("UPDATE b SET t = t || 'x', i2 = i2 + 1 WHERE id % 5 = 0");
    c.sql("DELETE FROM b WHERE id % 3 = 0");
    c.sql("VACUUM b");
    // Inserts after VACUUM fill the pages it freed (the metapage's notFullPage list).
    c.sql(
        "INSERT INTO b SELECT g, g % 97, g % 13, md5(g::text) FROM generate_series(15001, 18000) g",
    );
    c.sql("DELETE FROM b WHERE id > 16000");
    c.sql("VACUUM b");
    c.sql("INSERT INTO b VALUES (1, 1, 1, 'one')");
    // rum under the same kind of churn: inserts that grow the posting trees and split entry
    // pages, updates (new tuples, new items), deletes and VACUUM (items removed from posting
    // lists and trees, emptied posting-tree pages deleted), inserts into the freed space.
    c.sql(&format!(
        "INSERT INTO r SELECT g, {}, '2026-01-01'::timestamptz + g * interval '1 minute' \
         FROM generate_series(1501, 4500) g",
        rum_doc("g")
    ));
    c.sql(&format!(
        "UPDATE r SET tsv = {}, ts = ts + interval '1 day' WHERE id % 5 = 0",
        rum_doc("(id + 1)")
    ));
    c.sql("DELETE FROM r WHERE id % 7 = 4 OR id BETWEEN 2500 AND 3000");
    c.sql("VACUUM r");
    c.sql(&format!(
        "INSERT INTO r SELECT g, {}, '2026-03-01'::timestamptz + g * interval '1 minute' \
         FROM generate_series(4501, 5500) g",
        rum_doc("g")
    ));
    c.sql("DELETE FROM r WHERE id > 5200");
    c.sql("VACUUM r");

    // GetPage of every bloom and rum page, replaying the whole chain (no generated images,
    // no cache), equals the data file once CHECKPOINT wrote it.
    checkpoint_and_catch_up(&c, &mut h);
    let (mut served, mut deltas, mut bloom_pages) = (0u64, 0u64, 0u64);
    for idx in ["b_bloom", "b_bloom2", "r_rum", "r_rum_ts"] {
        let (served_before, deltas_before) = (served, deltas);
        let rel = c.rel_path(idx);
        let file = c
            .data
            .join(c.sql(&format!("SELECT pg_relation_filepath('{idx}')")));
        let blocks: u64 = c
            .sql(&format!("SELECT pg_relation_size('{idx}') / 8192"))
            .parse()
            .expect("relation size");
        assert!(blocks > 3, "{idx} has only {blocks} pages");
        let f = std::fs::File::open(&file).expect("open the index's data file");
        for blk in 0..blocks {
            let path = format!("/page/{rel}/main/{blk}?images=none&cache=none");
            let r = http(&h.listen, "GET", &path).expect("GET /page");
            assert_eq!(
                r.status,
                200,
                "GET {path}: {}",
                String::from_utf8_lossy(&r.body)
            );
            deltas += r
                .header("x-deltas-replayed")
                .and_then(|v| v.parse::<u64>().ok())
                .expect("x-deltas-replayed");
            let mut ours = r.body.clone();
            let mut theirs = vec![0u8; 8192];
            f.read_exact_at(&mut theirs, blk * 8192)
                .expect("read the data file");
            generic_mask(&mut ours);
            generic_mask(&mut theirs);
            assert!(
                ours == theirs,
                "{idx} block {blk}: served page differs from the data file"
            );
            served += 1;
        }
        let (pages, replayed) = (served - served_before, deltas - deltas_before);
        if idx.starts_with("b_") {
            bloom_pages += pages;
        }
        println!("GetPage {idx}: {pages} pages equal to the data file, {replayed} deltas replayed");
        // Each index on its own: the reads must replay its generic deltas, not only images
        // (a rum index whose pages all came from images would prove nothing about its redo).
        assert!(
            replayed > pages,
            "{idx}: the reads must replay generic deltas, not only images: {replayed} deltas \
             over {pages} pages"
        );
    }
    println!("GetPage: {served} bloom and rum pages equal to the data files, {deltas} deltas");
    h.kill9();

    // Every page the helper serves vs the data files.
    let helper_dir = dir.path().join("helper");
    let check = run_check(&helper_dir, &c.data, 300);
    let summary = &check.line;
    let num = |after: &str| check.num(after);
    assert!(num(" pages compared") > served, "{summary}");
    assert_eq!(num(" mismatches,"), 0, "{summary}");
    assert_eq!(num(" unreadable"), 0, "{summary}");

    // Every page after every record vs its consistency image, then vs the data files.
    let run = run_verify(&helper_dir, &c.data);
    assert_eq!(run.mismatches, 0, "mismatches:\n{}", run.stdout);
    assert_eq!(run.unreadable, 0, "unreadable pages:\n{}", run.stdout);
    assert!(run.ok, "verify failed:\n{}", run.stdout);
    let types = run
        .stdout
        .lines()
        .find(|l| l.starts_with("record types: "))
        .unwrap_or_default();
    let generic = count_after(types, "Generic/Generic ").unwrap_or(0);
    assert!(generic > 100, "too few Generic records: {types}");
    let kinds = run
        .stdout
        .lines()
        .find(|l| l.starts_with("data-file pages compared by kind: "))
        .unwrap_or_default();
    let generic_pages = count_after(kinds, "Generic ").unwrap_or(0);
    // Every bloom and rum page GetPage served is compared with the data files under the
    // Generic mask, including the rum pages that begin with a delta over a zeroed page
    // (rum logs the new page of a split so, not as GENERIC_XLOG_FULL_IMAGE as bloom does):
    // verify starts them from zeros as GetPage does, where PostgreSQL's redo would skip a
    // block missing from the file.
    assert_eq!(
        generic_pages, served,
        "bloom and rum pages compared with the data files as Generic ({bloom_pages} of them \
         bloom pages): {kinds}"
    );
    println!(
        "verify: {generic} Generic records, {} records, {} pages verified",
        run.records, run.pages
    );

    // The rum indexes, whose pages GetPage served exactly above, answer as the table does:
    // each query through a rum index scan (seq scan and bitmap scan off) equals a
    // sequential scan (index scans off).
    c.sql("VACUUM ANALYZE r");
    for cond in RUM_QUERIES {
        let (by_seq, plan_seq) = rum_answer(
            &c,
            "SET enable_indexscan = off; SET enable_bitmapscan = off;",
            cond,
        );
        let (by_rum, plan_rum) = rum_answer(
            &c,
            "SET enable_seqscan = off; SET enable_bitmapscan = off;",
            cond,
        );
        assert!(plan_seq.contains("Seq Scan"), "{cond}: {plan_seq}");
        assert!(
            plan_rum.contains("r_rum"),
            "{cond}: not a rum scan: {plan_rum}"
        );
        assert_eq!(by_rum, by_seq, "{cond}: rum index scan vs seq scan");
        println!("{cond}: {by_seq} (count:sum of ids) by seq scan and by rum index scan");
    }
}
