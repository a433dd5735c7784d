//! Generic WAL (resource manager 20) replayed by the Rust redo, with contrib `bloom` as the
//! access method writing it: a cluster with full_page_writes off and
//! wal_consistency_checking = all, a bloom index in the base backup and one built while the
//! helper streams, under inserts, updates, deletes and VACUUM. `redo-helper verify` finds
//! every page after every Generic record equal to its consistency image (masked as
//! `generic_mask` does) with no page unreadable; after CHECKPOINT the helper serves the
//! bloom pages (GetPage over HTTP, replaying the deltas) as the data files have them, and
//! `redo-helper check` and `verify --pgdata` agree for every page.

use crate::common::TempDir;
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

#[test]
fn bloom_index_generic_wal_replays_exactly() {
    let c = cluster();
    let dir = TempDir::new("generic-wal");
    // A bloom index that is in the base backup: its later deltas apply to base pages.
    c.sql("CREATE EXTENSION bloom");
    c.sql("CREATE TABLE b (id int, i1 int, i2 int, t text)");
    c.sql("INSERT INTO b SELECT g, g % 97, g % 13, md5(g::text) FROM generate_series(1, 3000) g");
    c.sql("CREATE INDEX b_bloom ON b USING bloom (i1, i2, t) WITH (length = 80)");
    let mut h = start_helper(&c, &dir);
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

    // GetPage of every bloom page, replaying the whole chain (no generated images, no
    // cache), equals the data file once CHECKPOINT wrote it.
    checkpoint_and_catch_up(&c, &mut h);
    let (mut served, mut deltas) = (0u64, 0u64);
    for idx in ["b_bloom", "b_bloom2"] {
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
            let r = http(h.listen, "GET", &path).expect("GET /page");
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
    }
    println!("GetPage: {served} bloom pages equal to the data files, {deltas} deltas replayed");
    assert!(
        deltas > served,
        "the reads must replay generic deltas, not only images: {deltas} deltas"
    );
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
    assert!(
        generic_pages >= served,
        "bloom pages compared with the data files as Generic: {kinds}"
    );
    println!(
        "verify: {generic} Generic records, {} records, {} pages verified",
        run.records, run.pages
    );
}
