//! SP-GiST redo against PostgreSQL 15 itself: the cluster of `redo_verify` (full_page_writes
//! off, wal_consistency_checking = all; wal_compression = zstd here to keep the images
//! small), SP-GiST indexes on text (radix, `text_ops`), inet (`inet_ops`), points (quad
//! tree `quad_point_ops` and k-d tree `kd_point_ops`) and ranges (`range_ops`), built on
//! loaded rows (the build logs page images), then changed row by row. The workload produces
//! every SP-GiST record type: leaf tuples added to chains, to placeholders and over dead
//! chain heads (ADD_LEAF), small chains moved off full leaves (MOVE_LEAFS), leaf chains split
//! under new inner tuples, the root's first split included (PICKSPLIT), radix nodes added to
//! inner tuples that then outgrow their page (ADD_NODE, in place and moved behind a
//! redirect), radix prefixes split by diverging values (SPLIT_TUPLE), VACUUM of leaves, of a
//! root that is still a leaf, and of redirects older than every snapshot (VACUUM_LEAF,
//! VACUUM_ROOT, VACUUM_REDIRECT); NULLs go to the nulls tree.
//! `redo-helper verify --pgdata` must find every replayed page equal to its consistency
//! image and to the data files, and `redo-helper check --pgdata` every page GetPage serves
//! equal to the data files.

use crate::common::{TempDir, waldump_archive};
use crate::gin::{copy_load, scans_agree};
use crate::redo_verify::{checkpoint_and_stop, cluster, run_verify_clean, start_helper};
use crate::support::run_check_clean;
use std::path::Path;
use std::time::Instant;

/// The SP-GiST record types as `verify` names them: all eight that PostgreSQL 15 writes.
const SPGIST_TYPES: [&str; 8] = [
    "SPGist/ADD_LEAF",
    "SPGist/MOVE_LEAFS",
    "SPGist/ADD_NODE",
    "SPGist/SPLIT_TUPLE",
    "SPGist/PICKSPLIT",
    "SPGist/VACUUM_LEAF",
    "SPGist/VACUUM_ROOT",
    "SPGist/VACUUM_REDIRECT",
];

/// Shapes of SP-GiST records in the helper's WAL archive (pg_waldump's view), the ones
/// where a record's blocks share work: ADD_NODE that moved the tuple (a second block,
/// the old place left a redirect), PICKSPLIT of a root (normal and nulls tree), PICKSPLIT
/// with the inner tuple on the parent's page, SPLIT_TUPLE on one page and on two,
/// VACUUM_REDIRECT that turned redirects into placeholders, ADD_LEAF over a dead head.
#[derive(Debug, Default)]
struct Shapes {
    add_node_moved: usize,
    root_split: usize,
    nulls_root_split: usize,
    inner_is_parent: usize,
    split_tuple_same: usize,
    split_tuple_other_page: usize,
    redirects_to_placeholders: usize,
    dead_head_replaced: usize,
}

fn shapes(wal: &Path) -> Shapes {
    let lines = waldump_archive(wal, "SPGist");
    let mut s = Shapes::default();
    for l in &lines {
        let Some(desc) = l.split("desc: ").nth(1) else {
            continue;
        };
        let field = |name: &str| -> Option<i64> {
            let rest = &desc[desc.find(&format!("{name}: "))? + name.len() + 2..];
            rest.split([',', ' ']).next()?.parse().ok()
        };
        if desc.starts_with("ADD_NODE") && field("parentBlk") != Some(-1) {
            s.add_node_moved += 1;
        }
        if desc.starts_with("PICKSPLIT") && desc.contains("(isRootSplit)") {
            if desc.contains("(nulls)") {
                s.nulls_root_split += 1;
            } else {
                s.root_split += 1;
            }
        }
        if desc.starts_with("PICKSPLIT") && desc.contains("(innerIsParent)") {
            s.inner_is_parent += 1;
        }
        if desc.starts_with("SPLIT_TUPLE") {
            if desc.contains("(same)") {
                s.split_tuple_same += 1;
            } else {
                s.split_tuple_other_page += 1;
            }
        }
        if desc.starts_with("VACUUM_REDIRECT") && field("ntoplaceholder").unwrap_or(0) > 0 {
            s.redirects_to_placeholders += 1;
        }
        if desc.starts_with("ADD_LEAF")
            && field("off").is_some_and(|o| o > 0 && Some(o) == field("headoff"))
        {
            s.dead_head_replaced += 1;
        }
    }
    s
}

#[test]
fn spgist_redo_matches_consistency_images_and_data_files() {
    let started = Instant::now();
    let c = cluster();
    c.sql("ALTER SYSTEM SET wal_compression = 'zstd'");
    c.sql("SELECT pg_reload_conf()");
    let dir = TempDir::new("redo-spgist");
    let h = start_helper(&c, &dir);

    // One table, five SP-GiST indexes, built on 20,000 loaded rows: URLs of seven hosts
    // (radix inner tuples with long prefixes), addresses in 10/8, points on a grid (quad
    // tree on p, k-d tree on q), short ranges.
    c.sql(
        "CREATE TABLE sp (id int, t text, ip inet, p point, q point, r int4range) \
         WITH (autovacuum_enabled = off)",
    );
    let rows = |from: u32, to: u32| {
        format!(
            "SELECT g, 'https://host' || (g % 7) || '.example.com/' || md5(g::text), \
             ('10.' || (g % 256) || '.' || (g / 256 % 256) || '.' || (g * 7 % 256))::inet, \
             point(g % 1000, g / 1000), point(g / 100, g % 100), \
             int4range(g % 5000, g % 5000 + g % 13 + 1) FROM generate_series({from}, {to}) g"
        )
    };
    copy_load(&c, "sp", &rows(1, 20000));
    c.sql("CREATE INDEX sp_t ON sp USING spgist (t text_ops)");
    c.sql("CREATE INDEX sp_ip ON sp USING spgist (ip inet_ops)");
    c.sql("CREATE INDEX sp_p ON sp USING spgist (p quad_point_ops)");
    c.sql("CREATE INDEX sp_q ON sp USING spgist (q kd_point_ops)");
    c.sql("CREATE INDEX sp_r ON sp USING spgist (r range_ops)");
    // Rows index by index: URLs of new hosts whose names diverge inside the built prefixes
    // (SPLIT_TUPLE) and new schemes; clustered addresses, points and ranges that pile into
    // a few leaf chains (MOVE_LEAFS, PICKSPLIT); NULLs, into the nulls tree until its root
    // leaf splits.
    copy_load(
        &c,
        "sp",
        "SELECT g, CASE WHEN g % 3 = 0 THEN 'https://host' || (g % 5) || '.exbmple.org/' \
         || md5(g::text) WHEN g % 3 = 1 THEN 'ftp://' || md5(g::text) \
         ELSE 'https://host1.example.com/' || g END, \
         ('192.168.' || (g % 4) || '.' || (g % 256))::inet, \
         point(500 + (g % 50) * 0.01, 10 + (g % 37) * 0.01), \
         point(50 + (g % 41) * 0.01, 50 + (g % 29) * 0.01), int4range(2500, 2500 + g % 50) \
         FROM generate_series(20001, 22500) g",
    );
    c.sql("INSERT INTO sp (id) SELECT g FROM generate_series(22501, 23000) g");
    // A fifth of the rows and a whole stretch go. VACUUM marks dead chain heads DEAD, the
    // rest PLACEHOLDER, moves live tuples to the head of their chain (VACUUM_LEAF), and
    // turns the redirects the inserts left into placeholders once their xid is older than
    // every snapshot, removing the placeholders at the end of a page (VACUUM_REDIRECT);
    // transactions in between, then VACUUM again.
    c.sql("DELETE FROM sp WHERE id % 5 = 0 OR id BETWEEN 5000 AND 9000");
    c.sql("VACUUM sp");
    c.sql("SELECT txid_current()");
    c.sql("SELECT txid_current()");
    c.sql("VACUUM sp");
    // Rows again: into placeholders, and rows of the deleted stretch back into the chains
    // it emptied, over their DEAD heads.
    copy_load(
        &c,
        "sp",
        "SELECT * FROM sp WHERE id BETWEEN 20001 AND 21000",
    );
    copy_load(&c, "sp", &rows(5000, 6000));
    c.sql("SELECT txid_current()");
    c.sql("VACUUM sp");

    // Radix nodes: 40 prefixes whose inner tuples have three nodes after the build, then
    // values with 80 new characters after each prefix: every one is a new node (ADD_NODE),
    // and the inner tuples outgrow their pages and move, leaving a redirect behind.
    c.sql("CREATE TABLE sn (id int, t text) WITH (autovacuum_enabled = off)");
    copy_load(
        &c,
        "sn",
        "SELECT g, 'k' || (g % 40) || '/' || chr(97 + g % 3) || md5(g::text) \
         FROM generate_series(1, 8000) g",
    );
    c.sql("CREATE INDEX sn_t ON sn USING spgist (t)");
    copy_load(
        &c,
        "sn",
        "SELECT g, 'k' || (g % 40) || '/' || chr(40 + (g / 40) % 80) || (g % 7) \
         FROM generate_series(8001, 12000) g",
    );

    // A small index whose root is still a leaf: VACUUM_ROOT, then rows until the root
    // splits (PICKSPLIT with isRootSplit outside the nulls tree).
    c.sql("CREATE TABLE sr (id int, t text) WITH (autovacuum_enabled = off)");
    c.sql("CREATE INDEX sr_t ON sr USING spgist (t)");
    c.sql("INSERT INTO sr SELECT g, 'v' || g FROM generate_series(1, 50) g");
    c.sql("DELETE FROM sr WHERE id % 2 = 0");
    c.sql("VACUUM sr");
    c.sql("INSERT INTO sr SELECT g, 'v' || g FROM generate_series(51, 500) g");

    for q in [
        "SELECT count(*) FROM sp WHERE t ^@ 'https://host3.exbmple.org/'",
        "SELECT count(*) FROM sp WHERE t ^@ 'ftp://a'",
        "SELECT count(*) FROM sp WHERE t >= 'https://host1.example.com/2' \
         AND t < 'https://host1.example.com/3'",
        "SELECT count(*) FROM sp WHERE t IS NULL",
        "SELECT count(*) FROM sp WHERE ip << '192.168.2.0/24'",
        "SELECT count(*) FROM sp WHERE ip << '10.3.0.0/16'",
        "SELECT count(*) FROM sp WHERE p <@ box '((500,10),(500.3,10.2))'",
        "SELECT count(*) FROM sp WHERE p <@ box '((100,2),(300,15))'",
        "SELECT count(*) FROM sp WHERE q <@ box '((50,50),(50.2,50.1))'",
        "SELECT count(*) FROM sp WHERE q <@ box '((20,10),(120,40))'",
        "SELECT count(*) FROM sp WHERE r && int4range(2500, 2510)",
        "SELECT count(*) FROM sp WHERE r @> 1234",
        "SELECT count(*) FROM sn WHERE t ^@ 'k17/'",
        "SELECT count(*) FROM sn WHERE t ^@ 'k3/Q'",
        "SELECT count(*) FROM sr WHERE t ^@ 'v4'",
    ] {
        let n = scans_agree(&c, q);
        assert!(
            n.trim().parse::<u64>().unwrap_or(0) > 0,
            "{q} found nothing"
        );
    }
    checkpoint_and_stop(&c, h);
    let workload_done = started.elapsed();

    let run = run_verify_clean(&dir.path().join("helper"), &c.data);
    let counts = run.every_type_replayed(&SPGIST_TYPES);
    println!(
        "SP-GiST record types replayed and checked: {counts:?}; workload {workload_done:.1?}, \
         verify {:.1?}",
        started.elapsed() - workload_done
    );

    // The shapes where blocks of one record share the work were among those verified.
    let s = shapes(&dir.path().join("helper").join("wal"));
    println!("SP-GiST record shapes: {s:?}");
    assert!(s.add_node_moved > 0, "{s:?}");
    assert!(s.root_split > 0 && s.nulls_root_split > 0, "{s:?}");
    assert!(s.inner_is_parent > 0, "{s:?}");
    assert!(
        s.split_tuple_same > 0 && s.split_tuple_other_page > 0,
        "{s:?}"
    );
    assert!(s.redirects_to_placeholders > 0, "{s:?}");
    assert!(s.dead_head_replaced > 0, "{s:?}");

    // GetPage for every page the helper serves, against the data files.
    run_check_clean(&dir.path().join("helper"), &c.data, 1000);
    println!("SP-GiST test: {:.1?} in all", started.elapsed());
}
