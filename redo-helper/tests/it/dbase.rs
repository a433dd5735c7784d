//! `CREATE DATABASE ... STRATEGY FILE_COPY` against PostgreSQL 15 itself, full_page_writes
//! off and wal_consistency_checking = all (the cluster of `redo_verify`), the helper's base
//! backup taken before the CREATE DATABASE. The one XLOG_DBASE_CREATE_FILE_COPY record makes
//! the new database's directory a file copy of the template's as of that record
//! (`dbase_redo`, commands/dbcommands.c): none of the new database's pages is in the base
//! backup, and a page never changed after the copy is in no WAL record either. Its history
//! starts at the template's page as of the copy LSN.
//!
//! - The template's pages are in the base backup and changed after it (so their state at
//!   the copy comes from replay), the template changes again after the copy (the new
//!   database must not see that), the new database then changes on its own (inserts,
//!   updates, deletes, VACUUM, a dropped table, a truncated one) and is itself the template
//!   of a second FILE_COPY. `verify --pgdata`, `check --pgdata` and GetPage of pages never
//!   changed after the copy must all agree with the data files.
//! - A template page the helper cannot prove at the copy (an index of an access method whose
//!   redo the helper does not implement) makes the copied page unreadable by name (409
//!   naming the copy), never a guess.
//! - With `--retain`, once the horizon passes the copy the new database's pages live on in
//!   retained images, across a restart.
//!
//! And the other strategy: with WAL_LOG (the default), `verify --pgdata` counts the
//! visibility-map pages whose bits PostgreSQL's own WAL cannot reproduce (their images are
//! standard-layout, the bitmap lies in the hole) as their own category, while a VM page
//! whose replayed bits are not a subset of the data file's stays a mismatch.

use crate::common::{PgCluster, TempDir};
use crate::redo_verify::{
    checkpoint_and_catch_up, cluster, run_verify, run_verify_with, start_helper,
    unreplayed_index_am,
};
use crate::support::{HelperProcess, http, lsn, run_check, status_lsn};
use std::path::Path;
use std::time::Duration;

/// Runs SQL in database `db` (one implicit transaction); panics on error.
fn sql_in(c: &PgCluster, db: &str, sql: &str) -> String {
    c.try_sql_in(db, sql)
        .unwrap_or_else(|e| panic!("{sql} in {db} failed:\n{e}"))
}

/// `spc/db/relfilenode` of relation `rel` in database `db` (the helper's `/page` path).
fn rel_path_in(c: &PgCluster, db: &str, rel: &str) -> String {
    sql_in(
        c,
        db,
        &format!(
            "SELECT CASE WHEN reltablespace = 0 THEN 1663 ELSE reltablespace END || '/' || \
             (SELECT oid FROM pg_database WHERE datname = current_database()) || '/' || \
             pg_relation_filenode('{rel}') FROM pg_class WHERE oid = '{rel}'::regclass"
        ),
    )
}

/// Blocks of relation `rel` in database `db`.
fn nblocks_in(c: &PgCluster, db: &str, rel: &str) -> u32 {
    sql_in(c, db, &format!("SELECT pg_relation_size('{rel}') / 8192"))
        .parse()
        .expect("relation size")
}

/// The data file page of `rel` (in `db`) block `blk`, main fork.
fn data_file_page(c: &PgCluster, db: &str, rel: &str, blk: u32) -> Vec<u8> {
    let file = sql_in(c, db, &format!("SELECT pg_relation_filepath('{rel}')"));
    let bytes = std::fs::read(c.data.join(file)).expect("read data file");
    let at = blk as usize * 8192;
    bytes[at..at + 8192].to_vec()
}

/// "pages copied by FILE_COPY N" in verify's summary.
fn pages_copied(stdout: &str) -> u64 {
    let label = "pages copied by FILE_COPY ";
    let at = stdout.find(label).expect("pages copied in the summary") + label.len();
    stdout[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

/// GET /page: status and body.
fn get_page(h: &HelperProcess, path: &str) -> (u16, Vec<u8>) {
    let r = http(&h.listen, "GET", path).expect("GET /page");
    (r.status, r.body)
}

/// A heap page with what PostgreSQL's heap_mask leaves out blanked: pd_lsn and pd_checksum,
/// the hint-like pd_flags and pd_prune_xid, the unused space between pd_lower and pd_upper
/// (pruning leaves old bytes there), and in each tuple the command id (redo does not
/// restore it) and the commit hint bits of t_infomask (set without WAL).
pub fn masked_heap_page(page: &[u8]) -> Vec<u8> {
    let mut p = page.to_vec();
    p[..12].fill(0);
    p[20..24].fill(0);
    let lower = u16::from_le_bytes([p[12], p[13]]) as usize;
    let upper = u16::from_le_bytes([p[14], p[15]]) as usize;
    if lower <= upper && upper <= 8192 {
        p[lower..upper].fill(0);
    }
    for lp in (24..lower.min(8192)).step_by(4) {
        let id = u32::from_le_bytes([p[lp], p[lp + 1], p[lp + 2], p[lp + 3]]);
        let (off, flags) = ((id & 0x7fff) as usize, (id >> 15) & 3);
        // LP_NORMAL: t_cid is the third uint32 of the tuple header, t_infomask at 20.
        if flags == 1 && off + 23 <= 8192 {
            p[off + 8..off + 12].fill(0);
            // HEAP_XMIN_COMMITTED | HEAP_XMIN_INVALID | HEAP_XMAX_COMMITTED |
            // HEAP_XMAX_INVALID (0x0F00), in the high byte.
            p[off + 21] &= !0x0F;
        }
    }
    p
}

fn assert_same_heap_page(what: &str, ours: &[u8], theirs: &[u8]) {
    assert_eq!(ours.len(), 8192, "{what}: {} bytes", ours.len());
    let (a, b) = (masked_heap_page(ours), masked_heap_page(theirs));
    let differ: Vec<usize> = (0..8192).filter(|&i| a[i] != b[i]).collect();
    assert!(
        differ.is_empty(),
        "{what}: helper vs data file: {} bytes differ, first at {} (helper {:?}, data file {:?})",
        differ.len(),
        differ[0],
        &a[differ[0]..(differ[0] + 16).min(8192)],
        &b[differ[0]..(differ[0] + 16).min(8192)]
    );
}

/// The template: two tables and an index, frozen (all-visible and all-frozen in the VM),
/// and a sequence.
fn create_template(c: &PgCluster, db: &str) {
    c.sql(&format!("CREATE DATABASE {db}"));
    sql_in(
        c,
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text, pad text);
         INSERT INTO t SELECT g, 'v' || g, repeat('p', 100) FROM generate_series(1, 3000) g;
         CREATE TABLE keep (id int, v text);
         INSERT INTO keep SELECT g, repeat('k', 50) FROM generate_series(1, 1500) g;
         CREATE TABLE doomed (a int);
         INSERT INTO doomed SELECT generate_series(1, 2000);
         CREATE SEQUENCE s;
         SELECT nextval('s');",
    );
    sql_in(c, db, "VACUUM (FREEZE) t");
    sql_in(c, db, "VACUUM (FREEZE) keep");
    sql_in(c, db, "VACUUM (FREEZE) doomed");
}

/// The new database's own changes after the copy.
fn change_copy(c: &PgCluster, db: &str) {
    sql_in(
        c,
        db,
        "INSERT INTO t SELECT g, 'new' || g, repeat('n', 100) FROM generate_series(3001, 3600) g",
    );
    sql_in(c, db, "UPDATE t SET v = v || '+' WHERE id % 11 = 0");
    sql_in(c, db, "DELETE FROM t WHERE id % 17 = 0");
    sql_in(c, db, "VACUUM t");
    sql_in(c, db, "DROP TABLE doomed");
    sql_in(c, db, "SELECT nextval('s')");
}

#[test]
fn file_copy_database_pages_start_from_the_template_at_the_copy() {
    let c = cluster();
    let dir = TempDir::new("dbase-file-copy");
    create_template(&c, "tmpl");
    let mut h = start_helper(&c, &dir);

    // The template changes after the base backup: its pages at the copy come from replay.
    sql_in(&c, "tmpl", "UPDATE t SET v = v || '/b' WHERE id % 5 = 0");
    sql_in(
        &c,
        "tmpl",
        "INSERT INTO keep SELECT g, 'late' FROM generate_series(1501, 1900) g",
    );
    sql_in(&c, "tmpl", "VACUUM (FREEZE) keep");
    sql_in(
        &c,
        "tmpl",
        "CREATE TABLE after_backup (a int, b text);
         INSERT INTO after_backup SELECT g, md5(g::text) FROM generate_series(1, 2500) g;",
    );
    sql_in(&c, "tmpl", "VACUUM (FREEZE) after_backup");
    c.sql("CREATE DATABASE x STRATEGY FILE_COPY TEMPLATE tmpl");
    // The template after the copy: none of this is in x.
    sql_in(&c, "tmpl", "UPDATE keep SET v = 'after the copy'");
    sql_in(&c, "tmpl", "TRUNCATE after_backup");
    sql_in(&c, "tmpl", "VACUUM (FREEZE) keep");
    change_copy(&c, "x");
    // A copy of the copy, changed too.
    c.sql("CREATE DATABASE y STRATEGY FILE_COPY TEMPLATE x");
    sql_in(&c, "y", "UPDATE t SET v = 'y' WHERE id < 200");
    // TRUNCATE gives y's keep a new relfilenode and drops the copied one at commit.
    let y_keep_copied = rel_path_in(&c, "y", "keep");
    sql_in(&c, "y", "TRUNCATE keep");
    checkpoint_and_catch_up(&c, &mut h);

    // Pages of x that no record touched after the copy, and of y (a copy of a copy): GetPage
    // serves the template's as of the copy.
    for (db, rel) in [("x", "keep"), ("x", "after_backup"), ("y", "after_backup")] {
        let path = rel_path_in(&c, db, rel);
        let n = nblocks_in(&c, db, rel);
        assert!(n > 3, "{db}.{rel}: {n} blocks");
        for blk in 0..n {
            let (status, body) = get_page(&h, &format!("/page/{path}/main/{blk}"));
            assert_eq!(
                status,
                200,
                "{db}.{rel} block {blk}: {}",
                String::from_utf8_lossy(&body)
            );
            assert_same_heap_page(
                &format!("{db}.{rel} block {blk}"),
                &body,
                &data_file_page(&c, db, rel, blk),
            );
        }
    }
    // The relfilenode y copied for keep was dropped by its TRUNCATE: gone in y (x still
    // has its own, served above).
    let (status, body) = get_page(&h, &format!("/page/{y_keep_copied}/main/0"));
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    h.kill9();

    let run = run_verify(&dir.path().join("helper"), &c.data);
    assert_eq!(run.mismatches, 0, "mismatches:\n{}", run.stdout);
    assert_eq!(run.unreadable, 0, "unreadable pages:\n{}", run.stdout);
    assert!(run.ok, "verify failed:\n{}", run.stdout);
    assert!(
        run.stdout.contains("Database/CREATE_FILE_COPY 2"),
        "two FILE_COPY records:\n{}",
        run.stdout
    );
    let copied = pages_copied(&run.stdout);
    assert!(copied > 1000, "pages copied by FILE_COPY: {copied}");
    // Over three threads, pages handed over after every batch and taken back every third:
    // each copy's pages are made by the thread that holds the template's, and the result is
    // the same.
    let args = [
        "--workers",
        "3",
        "--hand-over-every",
        "1",
        "--take-back-every",
        "3",
    ];
    let par = run_verify_with(&dir.path().join("helper"), &c.data, &args);
    assert!(par.ok, "parallel verify failed:\n{}", par.stdout);
    assert_eq!(
        (par.records, par.pages, par.mismatches, par.unreadable),
        (run.records, run.pages, 0, 0),
        "parallel verify"
    );
    assert_eq!(pages_copied(&par.stdout), copied);
    let check = run_check(&dir.path().join("helper"), &c.data, 300);
    assert_eq!(check.num(" mismatches,"), 0, "{}", check.line);
    assert_eq!(check.num(" missing"), 0, "{}", check.line);
    assert_eq!(check.num(" unreadable"), 0, "{}", check.line);
    assert_eq!(check.num(" errors"), 0, "{}", check.line);
}

#[test]
fn a_template_page_the_helper_cannot_prove_leaves_the_copied_page_unreadable() {
    let Some(am) = unreplayed_index_am() else {
        eprintln!("every built-in index access method is replayed: no template page to refuse");
        return;
    };
    let c = cluster();
    let dir = TempDir::new("dbase-unprovable");
    let mut h = start_helper(&c, &dir);
    // Created after the base backup: the template's pages are all from WAL, an index's by
    // records of an access method the helper does not replay.
    create_template(&c, "tmplh");
    sql_in(
        &c,
        "tmplh",
        &format!(
            "CREATE TABLE docs (id int PRIMARY KEY, p point);
             CREATE INDEX docs_p ON docs USING {} (p);
             INSERT INTO docs SELECT g, point(g % 97, g / 97) FROM generate_series(1, 5000) g;",
            am.using
        ),
    );
    c.sql("CREATE DATABASE xh STRATEGY FILE_COPY TEMPLATE tmplh");
    change_copy(&c, "xh");
    checkpoint_and_catch_up(&c, &mut h);

    let blk = am.changed_block;
    let template = rel_path_in(&c, "tmplh", "docs_p");
    let (status, body) = get_page(&h, &format!("/page/{template}/main/{blk}"));
    assert_eq!(
        status,
        409,
        "the template's {} page: {}",
        am.using,
        String::from_utf8_lossy(&body)
    );
    let copied = rel_path_in(&c, "xh", "docs_p");
    let (status, body) = get_page(&h, &format!("/page/{copied}/main/{blk}"));
    let msg = String::from_utf8_lossy(&body);
    assert_eq!(status, 409, "the copied {} page: {msg}", am.using);
    assert!(
        msg.contains("FILE_COPY") && msg.contains(&format!("{} record", am.rmgr)),
        "the error names the copy and the template's {} record: {msg}",
        am.rmgr
    );
    // The index goes, in both: a historical read still refuses the copied page, by name.
    // (verify and check below then leave its pages out: with SP-GiST, the metapage's
    // lastUsedPages, which PostgreSQL writes without WAL, would differ from the data file.)
    let before_drop = c.sql("SELECT pg_current_wal_lsn()");
    sql_in(&c, "tmplh", "DROP INDEX docs_p");
    sql_in(&c, "xh", "DROP INDEX docs_p");
    checkpoint_and_catch_up(&c, &mut h);
    let (status, body) = get_page(&h, &format!("/page/{copied}/main/{blk}?lsn={before_drop}"));
    let msg = String::from_utf8_lossy(&body);
    assert_eq!(status, 409, "the copied page before the drop: {msg}");
    assert!(msg.contains("FILE_COPY"), "{msg}");
    let (status, body) = get_page(&h, &format!("/page/{copied}/main/{blk}"));
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    // The template's frozen table is provable, and so is its copy.
    let keep = rel_path_in(&c, "xh", "keep");
    for blk in 0..nblocks_in(&c, "xh", "keep") {
        let (status, body) = get_page(&h, &format!("/page/{keep}/main/{blk}"));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_same_heap_page(
            &format!("xh.keep block {blk}"),
            &body,
            &data_file_page(&c, "xh", "keep", blk),
        );
    }
    h.kill9();

    let run = run_verify(&dir.path().join("helper"), &c.data);
    assert_eq!(run.mismatches, 0, "mismatches:\n{}", run.stdout);
    assert!(run.ok, "verify failed:\n{}", run.stdout);
    let check = run_check(&dir.path().join("helper"), &c.data, 100);
    assert_eq!(check.num(" mismatches,"), 0, "{}", check.line);
    assert_eq!(check.num(" errors"), 0, "{}", check.line);
}

/// Waits until the helper's retention horizon is past `target`.
fn wait_horizon_past(h: &mut HelperProcess, target: u64) {
    h.wait_status("retention horizon", Duration::from_secs(120), |s| {
        status_lsn(&s["retention"], "horizon_lsn") > target
    });
}

#[test]
fn file_copy_pages_survive_retention_past_the_copy() {
    let c = PgCluster::start_fpw_off(&[]);
    let dir = TempDir::new("dbase-retention");
    let helper_dir = dir.path().join("helper");
    let log = dir.path().join("helper.log");
    create_template(&c, "tmplr");
    let args = ["--retain", "32MB", "--retention-interval-ms", "300"];
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &helper_dir, &log, &args);
    h.wait_status("streaming", Duration::from_secs(120), |s| {
        s["state"] == "streaming" && s["consistent"] == true
    });
    sql_in(
        &c,
        "tmplr",
        "UPDATE keep SET v = 'before the copy' WHERE id % 3 = 0",
    );
    sql_in(&c, "tmplr", "VACUUM (FREEZE) keep");
    let before_copy = lsn(&c.sql("SELECT pg_current_wal_lsn()"));
    c.sql("CREATE DATABASE xr STRATEGY FILE_COPY TEMPLATE tmplr");
    let copy_lsn = lsn(&c.sql("SELECT pg_current_wal_lsn()"));
    sql_in(&c, "tmplr", "UPDATE keep SET v = 'after the copy'");
    change_copy(&c, "xr");
    // Push the horizon past the copy: 48 MB of WAL (segment switches).
    for _ in 0..3 {
        c.sql("SELECT pg_switch_wal()");
        c.sql("CREATE TABLE IF NOT EXISTS filler (a int); INSERT INTO filler VALUES (1)");
    }
    c.sql("CHECKPOINT");
    c.sql("SELECT pg_switch_wal()");
    c.sql("INSERT INTO filler VALUES (2)");
    wait_horizon_past(&mut h, copy_lsn);
    // A restart: the copy is only in retention.json now.
    h.kill9();
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &helper_dir, &log, &args);
    checkpoint_and_catch_up(&c, &mut h);
    // Pages of xr that no record touched after the copy: from the image retention stored at
    // the copy (the template's history there is gone), served and in a full-chain read.
    let keep = rel_path_in(&c, "xr", "keep");
    for blk in 0..nblocks_in(&c, "xr", "keep") {
        let path = format!("/page/{keep}/main/{blk}");
        let (status, body) = get_page(&h, &path);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_same_heap_page(
            &format!("xr.keep block {blk}"),
            &body,
            &data_file_page(&c, "xr", "keep", blk),
        );
        let full =
            http(&h.listen, "GET", &format!("{path}?images=none&cache=none")).expect("GET /page");
        assert_eq!(full.status, 200, "{}", String::from_utf8_lossy(&full.body));
        assert_eq!(full.body, body, "xr.keep block {blk}: full chain");
        let start = full.header("x-start").unwrap_or_default().to_string();
        let at = start.rsplit(' ').next().map(lsn).unwrap_or(0);
        assert!(
            start.starts_with("retained image at") && at > before_copy && at <= copy_lsn,
            "xr.keep block {blk} starts from {start}, the copy is in {before_copy:X}..{copy_lsn:X}"
        );
    }
    // Past the template's size at the copy: no such page.
    let (status, _) = get_page(&h, &format!("/page/{keep}/main/{}", 1000));
    assert_eq!(status, 404);
    h.kill9();
    let check = run_check(&helper_dir, &c.data, 200);
    assert_eq!(check.num(" mismatches,"), 0, "{}", check.line);
    assert_eq!(check.num(" missing"), 0, "{}", check.line);
    assert_eq!(check.num(" errors"), 0, "{}", check.line);
}

/// The number before `label` in verify's summary line ("12 vm_bits_not_in_wal").
fn count_before(line: &str, label: &str) -> u64 {
    line.split(label)
        .next()
        .and_then(|s| s.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before `{label}` in {line}"))
}

/// Verify's data-file and consistency-image counts of VM pages with bits the WAL does not
/// carry: "(consistency images N / M mismatches / V vm_bits_not_in_wal; ... data files N
/// pages / M mismatches / V vm_bits_not_in_wal".
fn vm_bits_counts(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("verify: "))
        .expect("summary line");
    let images = &line[line.find("(consistency images").expect("consistency part")..];
    let files = &line[line.find("data files").expect("data-file part")..];
    (
        count_before(files, " vm_bits_not_in_wal"),
        count_before(images, " vm_bits_not_in_wal"),
    )
}

/// Rewrites byte `at` of block `blk` of a data file with `f` of it.
fn poke(file: &Path, blk: usize, at: usize, f: impl FnOnce(u8) -> u8) {
    let mut bytes = std::fs::read(file).expect("read data file");
    let i = blk * 8192 + at;
    bytes[i] = f(bytes[i]);
    std::fs::write(file, bytes).expect("write data file");
}

#[test]
fn wal_log_copies_of_visibility_map_bits_are_their_own_category() {
    let c = cluster();
    let dir = TempDir::new("dbase-vm-bits");
    let mut h = start_helper(&c, &dir);
    // After the base backup: the template's VM bits come from its own WAL (VACUUM FREEZE),
    // the copy's from the WAL_LOG strategy's page images, whose hole is the bitmap.
    create_template(&c, "tmplv");
    c.sql("CREATE DATABASE w TEMPLATE tmplv STRATEGY WAL_LOG");
    // In the copy, heap block 0 of keep loses its bits (DELETE) and VACUUM sets them again
    // with XLOG_HEAP2_VISIBLE: set in the replay as on the primary.
    sql_in(&c, "w", "DELETE FROM keep WHERE id < 20");
    sql_in(&c, "w", "VACUUM keep");
    let keep_vm = c.data.join(format!(
        "{}_vm",
        sql_in(&c, "w", "SELECT pg_relation_filepath('keep')")
    ));
    let t_vm = c.data.join(format!(
        "{}_vm",
        sql_in(&c, "w", "SELECT pg_relation_filepath('t')")
    ));
    checkpoint_and_catch_up(&c, &mut h);
    h.kill9();

    let run = run_verify(&dir.path().join("helper"), &c.data);
    assert!(run.ok, "verify failed:\n{}", run.stdout);
    assert_eq!(run.mismatches, 0, "mismatches:\n{}", run.stdout);
    let (in_files, in_images) = vm_bits_counts(&run.stdout);
    println!(
        "VM pages with bits not in the WAL: {in_files} in the data files, {in_images} against consistency images"
    );
    // The copy's VM pages with any bit set on the primary: its catalogs' and t, keep, doomed.
    assert!(in_files >= 3, "{}", run.stdout);
    // VACUUM's XLOG_HEAP2_VISIBLE carries the VM page's consistency image: the primary's
    // whole bitmap.
    assert!(in_images >= 1, "{}", run.stdout);
    let check = run_check(&dir.path().join("helper"), &c.data, 100);
    assert_eq!(check.num(" mismatches,"), 0, "{}", check.line);
    assert_eq!(
        check.num(" vm_bits_not_in_wal"),
        in_files,
        "GetPage and verify agree: {}",
        check.line
    );

    // Real differences stay mismatches: a bit set in the replay and clear in the data file
    // (keep's heap block 0), and a header that differs (t's VM page: pd_flags).
    let mut c = c;
    c.stop();
    poke(&keep_vm, 0, 24, |b| b & !0x03);
    poke(&t_vm, 0, 10, |b| b ^ 0x04);
    let run = run_verify(&dir.path().join("helper"), &c.data);
    assert!(!run.ok, "verify must fail:\n{}", run.stdout);
    assert_eq!(run.mismatches, 2, "{}", run.stdout);
    assert_eq!(vm_bits_counts(&run.stdout), (in_files - 2, in_images));
}

/// The contents of the template's tables, as one digest.
const DIGEST: &str = "SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM t \
     UNION ALL SELECT md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM keep";
const AMCHECK: &str = "SELECT (SELECT count(*) FROM verify_heapam('t')) \
     + (SELECT count(*) FROM verify_heapam('keep')), bt_index_check('t_pkey', true)";

/// The copy's contents and amcheck, on a started cluster.
fn copy_intact(c: &PgCluster, db: &str, digest: &str) -> Result<(), String> {
    let run = |sql: &str| c.try_sql_in(db, sql);
    let got = run(DIGEST).map_err(|e| format!("reading the tables: {e}"))?;
    if got != digest {
        return Err(format!("contents differ: {got} != {digest}"));
    }
    let amcheck = run(AMCHECK).map_err(|e| format!("amcheck: {e}"))?;
    if !amcheck.starts_with("0|") {
        return Err(format!("amcheck found corruption: {amcheck}"));
    }
    Ok(())
}

/// A crash with full_page_writes off after a FILE_COPY: pages of the copy changed since the
/// checkpoint are torn, and so is a page of the copy no record has touched since the copy
/// (a torn hint-bit write: only its checksum tells). Repair rebuilds both from the template's
/// pages as of the copy, and the copy recovers to its contents before the crash.
#[test]
fn repair_restores_torn_pages_of_a_file_copy_database() {
    use crate::repair::{run_repair, stream_helper, summary_num, tear_with_any};
    let mut c = PgCluster::start_fpw_off(&["-k"]);
    let (_tmp, helper_dir, mut h) = stream_helper(&c, "dbase-repair");
    create_template(&c, "tmplc");
    sql_in(&c, "tmplc", "CREATE EXTENSION amcheck");
    c.sql("CREATE DATABASE xc STRATEGY FILE_COPY TEMPLATE tmplc");
    sql_in(&c, "tmplc", "UPDATE keep SET v = 'after the copy'");
    c.sql("CHECKPOINT");
    // Streamed: every page of xc's t changes.
    sql_in(&c, "xc", "UPDATE t SET v = v || '!' WHERE id % 3 = 0");
    h.kill9();
    // Only in pg_wal.
    sql_in(
        &c,
        "xc",
        "INSERT INTO t SELECT g, 'late', 'x' FROM generate_series(5001, 5300) g",
    );
    let digest = sql_in(&c, "xc", DIGEST);
    let t = sql_in(&c, "xc", "SELECT pg_relation_filepath('t')");
    let keep = sql_in(&c, "xc", "SELECT pg_relation_filepath('keep')");
    c.crash();
    let tear_all = |data: &Path| {
        for b in 0..3 {
            tear_with_any(&data.join(&t), b);
        }
        tear_with_any(&data.join(&keep), 1);
    };

    // Control: without repair the copy does not come back as it was.
    let mut control = c.copy_stopped();
    tear_all(&control.data);
    let outcome = match control.try_start() {
        Err(e) => Err(format!("startup failed:\n{e}")),
        Ok(()) => copy_intact(&control, "xc", &digest),
    };
    control.stop();
    assert!(
        outcome.is_err(),
        "the torn pages did not matter without repair: the test cannot fail"
    );
    eprintln!("without repair: {}", outcome.err().unwrap_or_default());

    tear_all(&c.data);
    let (code, stdout, stderr) = run_repair(&helper_dir, &c.data, &[]);
    assert_eq!(code, Some(0), "repair failed:\n{stdout}\n{stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    eprintln!("{line}");
    assert!(
        summary_num(line, " pages changed since written") >= 3,
        "{line}"
    );
    // The page no record touched since the copy: found by its checksum, rebuilt from the
    // template's page as of the copy.
    let checksum_rewrites: u64 = line
        .split("(checksum ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no checksum rewrites in {line}"));
    assert!(checksum_rewrites >= 1, "{line}");
    assert_eq!(summary_num(line, " unrepairable"), 0, "{line}");
    assert_eq!(summary_num(line, " errors"), 0, "{line}");
    c.try_start()
        .unwrap_or_else(|e| panic!("recovery after repair: {e}"));
    copy_intact(&c, "xc", &digest).unwrap_or_else(|e| panic!("after repair: {e}"));
}
