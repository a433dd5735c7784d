//! `pg_checksum_page` against PostgreSQL 15 itself: a throwaway cluster initialised with data
//! checksums (`initdb -k`), a table with an index, updates, deletes and a VACUUM (so the main
//! fork, the free space map and the visibility map all have pages), a CHECKPOINT and a clean
//! stop; then every page of those files, read back from disk, must carry in `pd_checksum`
//! exactly the checksum we compute for it and its block number.

use crate::common::PgCluster;
use redo_helper::wal::page::BLCKSZ;
use redo_helper::{Page, PageLayout, checksum_page};

/// Pages per 1 GB segment file (`RELSEG_SIZE`).
const RELSEG_SIZE: u32 = 131_072;

struct Checked {
    pages: u64,
    new_pages: u64,
    mismatches: Vec<String>,
}

/// Checks every page of one relation file (segment 0) against our checksum.
fn check_file(path: &std::path::Path, segment: u32, out: &mut Checked) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(
        bytes.len() % BLCKSZ,
        0,
        "{} is not whole pages",
        path.display()
    );
    for (i, chunk) in bytes.chunks_exact(BLCKSZ).enumerate() {
        let page: &Page = chunk.try_into().expect("8 KB page");
        if page.iter().all(|&b| b == 0) {
            // PageIsNew: PostgreSQL does not checksum never-initialised pages.
            out.new_pages += 1;
            continue;
        }
        let blkno = segment * RELSEG_SIZE + i as u32;
        let ours = checksum_page(page, blkno);
        let theirs = page.checksum();
        out.pages += 1;
        if ours != theirs {
            out.mismatches.push(format!(
                "{} block {blkno}: pd_checksum {theirs:#06x}, computed {ours:#06x}",
                path.display()
            ));
        }
        // The block number takes part: the same page as another block would not verify.
        assert_ne!(
            checksum_page(page, blkno + 1),
            theirs,
            "{} block {blkno}: checksum does not depend on the block number",
            path.display()
        );
    }
}

#[test]
fn checksums_match_postgresql_data_files() {
    let mut c = PgCluster::start(&["-k"], &["autovacuum = off"]);
    assert_eq!(
        c.sql("SHOW data_checksums"),
        "on",
        "initdb -k must enable checksums"
    );
    c.sql("CREATE TABLE ck (id int PRIMARY KEY, n int, pad text)");
    c.sql(
        "INSERT INTO ck SELECT g, g % 97, repeat(md5(g::text), 1 + g % 5) \
         FROM generate_series(1, 20000) g",
    );
    c.sql("UPDATE ck SET n = n + 1, pad = left(pad, 20) WHERE id % 7 = 0");
    c.sql("DELETE FROM ck WHERE id % 13 = 0");
    c.sql("VACUUM ck");
    c.sql("CHECKPOINT");
    let files: Vec<String> = ["ck", "ck_pkey"]
        .iter()
        .map(|r| c.sql(&format!("SELECT pg_relation_filepath('{r}')")))
        .collect();
    c.stop();

    let mut out = Checked {
        pages: 0,
        new_pages: 0,
        mismatches: Vec::new(),
    };
    let mut forks_seen = 0;
    for rel in &files {
        for fork in ["", "_fsm", "_vm"] {
            let path = c.data.join(format!("{rel}{fork}"));
            if !path.exists() {
                assert!(!fork.is_empty(), "{} missing", path.display());
                continue;
            }
            forks_seen += 1;
            check_file(&path, 0, &mut out);
            // A second segment only exists past 1 GB; this table is far smaller.
            assert!(!c.data.join(format!("{rel}{fork}.1")).exists());
        }
    }
    assert!(
        out.mismatches.is_empty(),
        "{} of {} pages have a different checksum:\n{}",
        out.mismatches.len(),
        out.pages,
        out.mismatches.join("\n")
    );
    // Heap main, fsm and vm forks plus the index (main and fsm) at least.
    assert!(forks_seen >= 4, "only {forks_seen} relation forks found");
    assert!(out.pages > 200, "too few pages checked: {}", out.pages);
    println!(
        "checksums: {} pages verified ({} new pages skipped) in {forks_seen} files",
        out.pages, out.new_pages
    );

    // The check can fail: one flipped bit anywhere changes the checksum.
    let path = c.data.join(&files[0]);
    let bytes = std::fs::read(&path).expect("read heap file");
    let mut page: Box<Page> = Box::new(bytes[..BLCKSZ].try_into().expect("first page"));
    let good = page.checksum();
    assert_eq!(checksum_page(&page, 0), good);
    for at in [0usize, 100, 4096, BLCKSZ - 1] {
        page[at] ^= 0x10;
        assert_ne!(
            checksum_page(&page, 0),
            good,
            "bit flip at {at} not detected"
        );
        page[at] ^= 0x10;
    }
}
