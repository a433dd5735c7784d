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
//! - A template page the helper cannot prove at the copy (a hash index, whose redo the
//!   helper does not implement) makes the copied page unreadable by name (409 naming the
//!   copy), never a guess.
//! - With `--retain`, once the horizon passes the copy the new database's pages live on in
//!   retained images, across a restart.
//!
//! And the other strategy: with WAL_LOG (the default), `verify --pgdata` counts the
//! visibility-map pages whose bits PostgreSQL's own WAL cannot reproduce (their images are
//! standard-layout, the bitmap lies in the hole) as their own category, while a VM page
//! whose replayed bits are not a subset of the data file's stays a mismatch.

use crate::common::{PgCluster, TempDir, pg_command};
use crate::redo_verify::{
    checkpoint_and_catch_up, cluster, run_verify, run_verify_with, start_helper,
};
use crate::support::{HelperProcess, http, lsn, run_check, status_lsn};
use std::time::Duration;

/// Runs SQL in database `db` (one implicit transaction); panics on error.
fn sql_in(c: &PgCluster, db: &str, sql: &str) -> String {
    let out = pg_command("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            db,
            "-h",
        ])
        .arg(&c.root)
        .args(["-p", &c.port.to_string(), "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql} in {db} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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
    let r = http(h.listen, "GET", path).expect("GET /page");
    (r.status, r.body)
}

/// A heap page with what PostgreSQL's heap_mask leaves out blanked: pd_lsn and pd_checksum,
/// the hint-like pd_flags and pd_prune_xid, the unused space between pd_lower and pd_upper
/// (pruning leaves old bytes there), and in each tuple the command id (redo does not
/// restore it) and the commit hint bits of t_infomask (set without WAL).
fn masked_heap_page(page: &[u8]) -> Vec<u8> {
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
    // Over three threads, pages handed over after every batch: each copy's pages are made
    // by the thread that holds the template's, and the result is the same.
    let args = ["--workers", "3", "--hand-over-every", "1"];
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
    let c = cluster();
    let dir = TempDir::new("dbase-unprovable");
    let mut h = start_helper(&c, &dir);
    // Created after the base backup: the template's pages are all from WAL, its hash index
    // by records the helper does not replay.
    create_template(&c, "tmplh");
    sql_in(
        &c,
        "tmplh",
        "CREATE INDEX keep_hash ON keep USING hash (id)",
    );
    c.sql("CREATE DATABASE xh STRATEGY FILE_COPY TEMPLATE tmplh");
    change_copy(&c, "xh");
    checkpoint_and_catch_up(&c, &mut h);

    let hash = rel_path_in(&c, "xh", "keep_hash");
    let (status, body) = get_page(&h, &format!("/page/{hash}/main/0"));
    let msg = String::from_utf8_lossy(&body);
    assert_eq!(status, 409, "copied hash index page: {msg}");
    assert!(
        msg.contains("FILE_COPY") && msg.contains("Hash"),
        "the error names the copy and the template's record: {msg}"
    );
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

    // The hash pages changed by Hash records (its bucket pages are logged as images) are
    // unreadable in the template and, the same number, in the copy.
    let run = run_verify(&dir.path().join("helper"), &c.data);
    assert_eq!(run.mismatches, 0, "mismatches:\n{}", run.stdout);
    assert!(
        run.unreadable >= 2 && run.unreadable.is_multiple_of(2),
        "the template's unreadable hash pages and their copies:\n{}",
        run.stdout
    );
    let check = run_check(&dir.path().join("helper"), &c.data, 100);
    assert_eq!(check.num(" mismatches,"), 0, "{}", check.line);
    assert_eq!(check.num(" errors"), 0, "{}", check.line);
    assert_eq!(
        check.num(" unreadable"),
        run.unreadable,
        "GetPage refuses the same pages verify does: {}",
        check.line
    );
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
    let keep = rel_path_in(&c, "xr", "keep");
    for blk in 0..nblocks_in(&c, "xr", "keep") {
        let (status, body) = get_page(&h, &format!("/page/{keep}/main/{blk}"));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_same_heap_page(
            &format!("xr.keep block {blk}"),
            &body,
            &data_file_page(&c, "xr", "keep", blk),
        );
    }
    h.kill9();
    let check = run_check(&helper_dir, &c.data, 200);
    assert_eq!(check.num(" mismatches,"), 0, "{}", check.line);
    assert_eq!(check.num(" missing"), 0, "{}", check.line);
    assert_eq!(check.num(" errors"), 0, "{}", check.line);
}
