//! BRIN redo against PostgreSQL 15 itself: the cluster of `redo_verify` (full_page_writes
//! off, wal_consistency_checking = all, so every BRIN record carries the image of every
//! page it touches), BRIN indexes of the four opclass families (minmax, minmax-multi,
//! bloom, inclusion) with ranges of one to four pages on a table of ~2000 pages, so that
//! the revmap needs a second page and the regular page in its way is evacuated. The
//! workload produces every BRIN record type; `redo-helper verify --pgdata` must find every
//! replayed page equal to its consistency image and to the data files, and `redo-helper
//! check --pgdata` every page GetPage serves equal to the data files.

use crate::common::TempDir;
use crate::redo_verify::{checkpoint_and_stop, cluster, run_verify_clean, start_helper};
use crate::support::run_check_clean;

/// The BRIN record types as `verify` names them.
const BRIN_TYPES: [&str; 8] = [
    "BRIN/CREATE_INDEX",
    "BRIN/INSERT",
    "BRIN/INSERT+INIT",
    "BRIN/UPDATE",
    "BRIN/UPDATE+INIT",
    "BRIN/SAMEPAGE_UPDATE",
    "BRIN/REVMAP_EXTEND",
    "BRIN/DESUMMARIZE",
];

#[test]
fn brin_redo_matches_consistency_images_and_data_files() {
    let c = cluster();
    let dir = TempDir::new("redo-brin");
    let h = start_helper(&c, &dir);

    c.sql("CREATE EXTENSION pageinspect");
    // fillfactor 10: about three rows per heap page, ~2000 pages for 6000 rows, so a BRIN
    // index with one page per range has more ranges than one revmap page holds (1360).
    c.sql(
        "CREATE TABLE br (id int, i8 int8, i4 int4, bx box, ip inet, pad text) \
         WITH (fillfactor = 10)",
    );
    c.sql(
        "INSERT INTO br SELECT g, g * 7, g % 5000, box(point(g, g), point(g + 3, g + 3)), \
         inet '10.0.0.0' + g, repeat('x', 200) FROM generate_series(1, 6000) g",
    );
    // Builds log record by record: CREATE_INDEX, REVMAP_EXTEND, INSERT(+INIT), and the
    // evacuation of the regular page at block 2 when the revmap grows over it (UPDATE).
    c.sql("CREATE INDEX br_minmax ON br USING brin (id) WITH (pages_per_range = 1)");
    c.sql(
        "CREATE INDEX br_multi ON br USING brin (i8 int8_minmax_multi_ops) \
         WITH (pages_per_range = 1)",
    );
    c.sql("CREATE INDEX br_bloom ON br USING brin (i4 int4_bloom_ops) WITH (pages_per_range = 2)");
    c.sql("CREATE INDEX br_box ON br USING brin (bx box_inclusion_ops) WITH (pages_per_range = 2)");
    c.sql(
        "CREATE INDEX br_inet ON br USING brin (ip inet_inclusion_ops) \
         WITH (pages_per_range = 4)",
    );
    let last_revmap =
        c.sql("SELECT lastrevmappage FROM brin_metapage_info(get_raw_page('br_minmax', 0))");
    assert!(
        last_revmap.trim().parse::<u32>().unwrap_or(0) >= 2,
        "the revmap must span two pages: lastrevmappage {last_revmap}"
    );
    // Non-HOT updates (PostgreSQL 15 treats BRIN columns like any indexed column) put new
    // row versions on the same heap pages: summaries widen in place (SAMEPAGE_UPDATE) or,
    // when they grow past the free space of their page (minmax-multi collecting distinct
    // values, inclusion boxes), move to another page (UPDATE, UPDATE+INIT).
    c.sql(
        "UPDATE br SET id = id + 100000, i8 = i8 * 13 + 5, i4 = i4 + 77777, \
         bx = box(point(-id, -id), point(id * 2, id * 2)), ip = inet '192.168.0.0' + id \
         WHERE id % 4 = 0",
    );
    c.sql("UPDATE br SET i8 = -i8 * 3 WHERE id % 4 = 1");
    c.sql("UPDATE br SET i8 = i8 + 1000000007 WHERE id % 4 = 2");
    // New ranges at the end are not summarised by inserts; summarising them inserts a
    // placeholder tuple (INSERT) and then replaces it with the summary.
    c.sql(
        "INSERT INTO br SELECT g, g * 7, g % 5000, box(point(g, g), point(g + 3, g + 3)), \
         inet '10.0.0.0' + g, repeat('y', 200) FROM generate_series(6001, 7500) g",
    );
    c.sql("SELECT brin_summarize_new_values('br_minmax')");
    c.sql("SELECT brin_summarize_range('br_multi', 2100)");
    // Desummarize ranges (revmap slot cleared, tuple removed), then summarise them again.
    c.sql(
        "SELECT count(brin_desummarize_range('br_minmax', b)) \
         FROM generate_series(0, 1500, 7) b",
    );
    c.sql("SELECT brin_desummarize_range('br_bloom', 10)");
    c.sql("SELECT brin_desummarize_range('br_box', 100)");
    c.sql("SELECT brin_summarize_range('br_minmax', 0)");
    // VACUUM summarises whatever is left unsummarised (brinvacuumcleanup).
    c.sql("DELETE FROM br WHERE id % 17 = 0");
    c.sql("VACUUM br");
    // An index scan over the BRIN index, for good measure (no WAL).
    let n = c.sql("SET enable_seqscan = off; SELECT count(*) FROM br WHERE id BETWEEN 10 AND 900");
    assert!(!n.trim().is_empty());
    // pageinspect's install scripts replace functions, leaving dead pg_proc tuples; vacuum
    // them now, or a catalog lookup after the CHECKPOINT prunes a page whose data file
    // then lags the WAL.
    c.sql("VACUUM");
    checkpoint_and_stop(&c, h);

    let run = run_verify_clean(&dir.path().join("helper"), &c.data);
    assert!(run.pages > 10_000, "too few pages verified: {}", run.pages);
    let counts = run.every_type_replayed(&BRIN_TYPES);
    println!("BRIN record types replayed and checked: {counts:?}");

    // GetPage for every page the helper serves, against the data files.
    run_check_clean(&dir.path().join("helper"), &c.data, 2000);
}
