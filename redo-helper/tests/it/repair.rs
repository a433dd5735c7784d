//! `redo-helper repair` after a crash with full_page_writes off (design.md section 4): a
//! cluster with data checksums runs pgbench with the helper attached, then more work while the
//! helper is down (that WAL is only in pg_wal), then crashes (immediate stop). Pages are torn
//! on disk the way an interrupted 8 KB write leaves them: the second 4 KB of pages changed
//! since the checkpoint, and of a page of a table untouched since (a torn hint-bit write).
//!
//! - Without repair (a copy of the crashed directory), PostgreSQL cannot recover to the same
//!   data: startup fails, a query fails on a checksum, or the contents/amcheck differ.
//! - With repair, crash recovery completes, every table has exactly the contents it had
//!   before the crash, and amcheck (verify_heapam, bt_index_check with heapallindexed) is
//!   clean.

use crate::common::{PgCluster, TempDir};
use crate::support::{HELPER_BIN, HelperProcess};
use crate::{common, support};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

pub(crate) const DIGEST: &str = "SELECT md5(string_agg(x, '|')) FROM ( \
     (SELECT string_agg(aid || ':' || abalance, ',' ORDER BY aid) FROM pgbench_accounts) \
     UNION ALL (SELECT string_agg(bid || ':' || bbalance, ',' ORDER BY bid) FROM pgbench_branches) \
     UNION ALL (SELECT string_agg(tid || ':' || tbalance, ',' ORDER BY tid) FROM pgbench_tellers) \
     UNION ALL (SELECT count(*)::text || ':' || coalesce(sum(delta), 0) FROM pgbench_history) \
     UNION ALL (SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM quiet)) AS t(x)";

pub(crate) const AMCHECK: &str = "SELECT (SELECT count(*) FROM verify_heapam('pgbench_accounts')) \
     + (SELECT count(*) FROM verify_heapam('pgbench_branches')) \
     + (SELECT count(*) FROM verify_heapam('pgbench_tellers')) \
     + (SELECT count(*) FROM verify_heapam('pgbench_history')) \
     + (SELECT count(*) FROM verify_heapam('quiet')), \
     bt_index_check('pgbench_accounts_pkey', true), bt_index_check('pgbench_branches_pkey', true), \
     bt_index_check('pgbench_tellers_pkey', true), bt_index_check('quiet_pkey', true)";

/// Overwrites the second half of block `blk` of `file` with other bytes: those of another
/// block of the same file (valid-looking, wrong), as a write that stopped after 4 KB leaves a
/// mix of two versions.
pub(crate) fn tear(file: &std::path::Path, blk: u64, other: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    let mut half = vec![0u8; 4096];
    f.read_exact_at(&mut half, other * 8192 + 4096)
        .expect("read other block");
    let mut mine = vec![0u8; 4096];
    f.read_exact_at(&mut mine, blk * 8192 + 4096)
        .expect("read block");
    assert_ne!(
        half,
        mine,
        "{} block {blk}: tearing would change nothing",
        file.display()
    );
    f.write_all_at(&half, blk * 8192 + 4096).expect("tear");
    f.sync_all().expect("sync");
}

/// Blocks (by ctid) holding rows that match `cond` in `table`.
pub(crate) fn blocks_of(c: &PgCluster, table: &str, cond: &str) -> Vec<u64> {
    c.sql(&format!(
        "SELECT DISTINCT (ctid::text::point)[0]::bigint AS b FROM {table} WHERE {cond} ORDER BY b"
    ))
    .lines()
    .filter_map(|l| l.trim().parse().ok())
    .collect()
}

/// Runs `redo-helper repair` (with `flags`) on `pgdata`: (exit code, stdout, stderr).
pub(crate) fn run_repair(
    helper_dir: &std::path::Path,
    pgdata: &std::path::Path,
    flags: &[&str],
) -> (Option<i32>, String, String) {
    let out = Command::new(HELPER_BIN)
        .arg("repair")
        .args(flags)
        .arg("--data-dir")
        .arg(helper_dir)
        .arg("--pgdata")
        .arg(pgdata)
        .output()
        .expect("redo-helper repair");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Whether the cluster recovers to `digest` with clean amcheck.
pub(crate) fn recovers_intact(c: &mut PgCluster, digest: &str) -> Result<(), String> {
    c.try_start().map_err(|e| format!("startup failed:\n{e}"))?;
    let got = c
        .try_sql(DIGEST)
        .map_err(|e| format!("reading the tables: {e}"))?;
    if got != digest {
        return Err(format!("contents differ: {got} != {digest}"));
    }
    let amcheck = c.try_sql(AMCHECK).map_err(|e| format!("amcheck: {e}"))?;
    if !amcheck.starts_with("0|") {
        return Err(format!("amcheck found corruption: {amcheck}"));
    }
    Ok(())
}

#[test]
fn repair_restores_torn_pages_after_a_crash_with_fpw_off() {
    crash_tear_repair(15, true);
}

/// Without data checksums the torn page of the untouched table is found by the masked
/// comparison with the helper's page.
#[test]
fn repair_without_data_checksums() {
    crash_tear_repair(15, false);
}

/// Starts the helper on `c` in a new temp dir and waits until it streams: (temp dir, the
/// helper's data directory, the helper).
pub(crate) fn stream_helper(
    c: &PgCluster,
    tag: &str,
) -> (TempDir, std::path::PathBuf, HelperProcess) {
    let tmp = TempDir::new(tag);
    let helper_dir = tmp.path().join("helper");
    let mut h = HelperProcess::spawn(&c.conninfo(), &helper_dir, &tmp.path().join("helper.log"));
    h.wait_status("streaming", Duration::from_secs(120), |s| {
        s["state"] == "streaming"
    });
    (tmp, helper_dir, h)
}

/// The count before `after` in repair's summary `line`.
pub(crate) fn summary_num(line: &str, after: &str) -> u64 {
    line.split(after)
        .next()
        .and_then(|s| s.split_whitespace().last())
        .and_then(|w| w.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("no '{after}' in {line}"))
}

/// The crash, tear and repair of this module's tests on PostgreSQL `major` (16..18 from
/// `versions`, where pg_controldata is not installed: the REDO location is then not
/// cross-checked).
pub(crate) fn crash_tear_repair(major: u32, checksums: bool) {
    // 18's initdb enables checksums unless told not to.
    let no_checksums: &[&str] = if major >= 18 {
        &["--no-data-checksums"]
    } else {
        &[]
    };
    let mut c =
        PgCluster::start_fpw_off_version(major, if checksums { &["-k"] } else { no_checksums });
    c.pgbench(&["-i", "-s", "2", "-q"]);
    c.sql("CREATE EXTENSION amcheck");
    c.sql(
        "CREATE TABLE quiet (id int PRIMARY KEY, v text); \
         INSERT INTO quiet SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 2000) g",
    );
    let (tmp, helper_dir, mut h) = stream_helper(&c, "repair");
    // Hint bits of `quiet` set now: with data checksums the first hint-bit change of a page
    // after a checkpoint is WAL-logged (XLOG_FPI_FOR_HINT); after this checkpoint `quiet`
    // has no change at all.
    c.sql("SELECT count(*) FROM quiet");
    c.sql("CHECKPOINT");
    c.pgbench(&["-n", "-c", "2", "-t", "300"]);
    // The helper goes away (killed); the slot keeps the WAL it misses in pg_wal.
    h.kill9();
    c.pgbench(&["-n", "-c", "2", "-t", "200"]);
    c.sql("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 97 = 0");
    let digest = c.sql(DIGEST);
    let accounts = c
        .data
        .join(c.sql("SELECT pg_relation_filepath('pgbench_accounts')"));
    let quiet = c.data.join(c.sql("SELECT pg_relation_filepath('quiet')"));
    let changed = blocks_of(&c, "pgbench_accounts", "aid % 97 = 0 AND aid > 20000");
    let quiet_blocks = blocks_of(&c, "quiet", "true");
    assert!(changed.len() >= 3 && quiet_blocks.len() >= 3);
    c.crash();
    // Our reading of pg_control agrees with pg_controldata (checked again in the summary).
    let redo = (major == 15).then(|| {
        let controldata = common::pg_command("pg_controldata")
            .arg(&c.data)
            .output()
            .expect("pg_controldata");
        let controldata = String::from_utf8_lossy(&controldata.stdout).to_string();
        controldata
            .lines()
            .find_map(|l| l.strip_prefix("Latest checkpoint's REDO location:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no REDO location in {controldata}"))
    });

    // Torn writes: three accounts pages changed after the checkpoint, one quiet page.
    for &b in &changed[..3] {
        tear(&accounts, b, b + 1);
    }
    tear(&quiet, quiet_blocks[1], quiet_blocks[2]);

    // Control: the same crash without repair does not come back intact.
    let mut control = c.copy_stopped();
    let outcome = recovers_intact(&mut control, &digest);
    control.stop();
    assert!(
        outcome.is_err(),
        "the torn pages did not matter without repair: the test cannot fail"
    );
    eprintln!("without repair: {}", outcome.err().unwrap_or_default());

    // --changed-only writes the changed pages and checks nothing else: the torn page of
    // `quiet` is left for the full repair below.
    let (code, quick_out, _) = run_repair(&helper_dir, &c.data, &["--changed-only"]);
    assert_eq!(code, Some(0), "{quick_out}");
    assert!(
        quick_out.contains(" 0 other pages checked, 0 rewritten"),
        "{quick_out}"
    );

    let (code, stdout, stderr) = run_repair(&helper_dir, &c.data, &[]);
    assert_eq!(code, Some(0), "repair failed:\n{stdout}\n{stderr}");
    eprintln!("{stderr}{stdout}");
    let line = stdout.lines().last().unwrap_or_default();
    let num = |after: &str| summary_num(line, after);
    // (--changed-only above already took the WAL from pg_wal into the archive.)
    assert!(
        quick_out.contains("records taken from pg_wal") && !quick_out.contains("(0 records taken"),
        "{quick_out}"
    );
    if let Some(redo) = redo {
        let (hi, lo) = redo.split_once('/').expect("LSN");
        let redo = format!("{hi}/{lo:0>8}");
        assert!(
            line.contains(&format!("checkpoint REDO {redo};")),
            "pg_controldata says {redo}: {line}"
        );
    } else {
        assert!(line.contains("checkpoint REDO "), "{line}");
    }
    assert!(num(" pages changed since written") >= 3, "{line}");
    assert!(num(" other pages checked") > 0, "{line}");
    assert!(num(" rewritten (checksum") >= 1, "{line}");
    if checksums {
        assert!(
            line.contains("(checksum 1,"),
            "the torn quiet page fails its checksum: {line}"
        );
    } else {
        assert!(
            line.contains("mismatch 1)"),
            "the torn quiet page differs: {line}"
        );
    }
    assert_eq!(num(" unrepairable"), 0, "{line}");

    // Repairing twice is harmless (nothing left to take from pg_wal, nothing torn).
    let (code, again_out, _) = run_repair(&helper_dir, &c.data, &[]);
    assert_eq!(code, Some(0), "second repair: {again_out}");
    assert!(
        again_out.contains("0 records taken from pg_wal"),
        "{again_out}"
    );
    assert!(again_out.contains("0 rewritten"), "{again_out}");

    if let Err(e) = recovers_intact(&mut c, &digest) {
        panic!("after repair: {e}");
    }
    // After a clean shutdown there is nothing to do (and the store is not even opened).
    c.stop();
    let (code, clean_out, _) = run_repair(&helper_dir, &c.data, &[]);
    assert_eq!(code, Some(0), "{clean_out}");
    assert!(clean_out.contains("clean shutdown"), "{clean_out}");
    c.try_start().expect("restart");

    // The helper follows the cluster on from where repair left its archive.
    let mut h = HelperProcess::spawn(&c.conninfo(), &helper_dir, &tmp.path().join("helper.log"));
    c.pgbench(&["-n", "-c", "2", "-t", "100"]);
    let target = support::lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    h.wait_status("streaming after repair", Duration::from_secs(60), |s| {
        support::status_lsn(s, "decoded_lsn") >= target
    });
}

#[test]
fn repair_refuses_a_running_cluster_and_a_foreign_one() {
    let mut c = PgCluster::start(
        &[],
        &[
            "listen_addresses = '127.0.0.1'",
            "wal_level = replica",
            "max_wal_senders = 10",
        ],
    );
    let mut other = PgCluster::start(&[], &[]);
    other.crash();
    let tmp = TempDir::new("repair-refuse");
    let helper_dir = tmp.path().join("helper");
    let mut h = HelperProcess::spawn(&c.conninfo(), &helper_dir, &tmp.path().join("helper.log"));
    h.wait_status("streaming", Duration::from_secs(120), |s| {
        s["state"] == "streaming"
    });
    h.kill9();
    let run = |pgdata: &std::path::Path| {
        let (code, _, err) = run_repair(&helper_dir, pgdata, &[]);
        (code, err)
    };
    let (code, err) = run(&c.data);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("PostgreSQL is running"), "{err}");
    c.crash();

    // A single-user backend (`postgres --single`) writes its PID negated: still running.
    let mut single = common::pg_command("postgres")
        .args(["--single", "-D"])
        .arg(&c.data)
        .arg("postgres")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("postgres --single");
    let pidfile = c.data.join("postmaster.pid");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&pidfile).is_ok_and(|t| t.starts_with('-')) {
        assert!(
            std::time::Instant::now() < deadline,
            "no single-user postmaster.pid"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, err) = run(&c.data);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("single-user backend"), "{err}");
    drop(single.stdin.take());
    let _ = single.wait();

    // While repair holds postmaster.pid (here: a live process's PID in a 0600 file of the
    // user running the test, as repair writes its own), PostgreSQL refuses to start on the
    // directory.
    let mut holder = Command::new("sleep").arg("60").spawn().expect("sleep");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pidfile)
            .expect("create postmaster.pid");
        write!(f, "{}\n{}\n", holder.id(), c.data.display()).expect("write postmaster.pid");
    }
    let started = c.try_start();
    let _ = holder.kill();
    let _ = holder.wait();
    let refusal = started.expect_err("PostgreSQL started over a held postmaster.pid");
    // As root, the 0600 file cannot even be opened by pg_ctl or the postmaster.
    assert!(
        refusal.contains("lock file") || refusal.contains("PID file"),
        "{refusal}"
    );
    // The holder is gone: its file is stale, and repair replaces and removes it.
    let (code, out, err) = run_repair(&helper_dir, &c.data, &["--changed-only"]);
    assert!(matches!(code, Some(0) | Some(1)), "{out}\n{err}");
    assert!(!pidfile.exists(), "repair left postmaster.pid behind");
    let (code, err) = run(&other.data);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("different cluster"), "{err}");
    let (code, err) = run(&tmp.path().join("nowhere"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("pg_control"), "{err}");
}

/// Conditions on `ib` and the index that answers each (checked with EXPLAIN).
const IB_QUERIES: [(&str, &str); 21] = [
    ("t BETWEEN 5000 AND 6000", "ib_brin"),
    ("t BETWEEN 20500 AND 22600", "ib_brin"),
    ("t > 100000 AND t < 150000", "ib_brin"),
    ("t >= 200000", "ib_brin"),
    ("a = 123", "ib_bloom"),
    ("a = 999", "ib_bloom"),
    ("a = 124 AND b = 13", "ib_bloom"),
    ("a = 8 AND b = 8", "ib_bloom"),
    ("tags @> ARRAY[17]", "ib_gin"),
    ("tags @> ARRAY[1003, 42]", "ib_gin"),
    ("tags && ARRAY[77, 21500, 22999]", "ib_gin"),
    // Every row through the GiST index (b is 0..36): a torn leaf anywhere shows.
    ("point(t, b) <@ box '((0,0),(1000000,40))'", "ib_gist"),
    ("point(t, b) <@ box '((20000,0),(23000,10))'", "ib_gist"),
    ("point(t, b) <@ box '((100000,5),(300000,36))'", "ib_gist"),
    ("id % 997 = 5", "ib_hash"),
    ("id % 997 = 996", "ib_hash"),
    // Every row through the SP-GiST quad tree (a is 0..1000), a slice and one point.
    ("point(a, b) <@ box '((0,0),(1001,40))'", "ib_spgist"),
    ("point(a, b) <@ box '((100,3),(250,20))'", "ib_spgist"),
    ("point(a, b) ~= point(124, 13)", "ib_spgist"),
    ("id = 4243", "ib_pkey"),
    ("id = 21001", "ib_pkey"),
];

/// Each query of IB_QUERIES (`count digest`) through its index, after checking that the
/// same query by sequential scan gives the same rows, and that amcheck is clean.
fn ib_index_results(c: &PgCluster) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (cond, index) in IB_QUERIES {
        let q = format!(
            "SELECT count(*) || ' ' || md5(coalesce(string_agg(id || ':' || t || ':' || a \
             || ':' || b, ',' ORDER BY id), '')) FROM ib WHERE {cond}"
        );
        let idx = "SET enable_seqscan = off;";
        let seq = "SET enable_indexscan = off; SET enable_bitmapscan = off;";
        let plan = c.try_sql(&format!("{idx} EXPLAIN (COSTS OFF) {q}"))?;
        if !plan.contains(index) {
            return Err(format!("{cond}: not through {index}:\n{plan}"));
        }
        let plan = c.try_sql(&format!("{seq} EXPLAIN (COSTS OFF) {q}"))?;
        if !plan.contains("Seq Scan") {
            return Err(format!("{cond}: no sequential scan:\n{plan}"));
        }
        let by_index = c.try_sql(&format!("{idx} {q}"))?;
        let by_seq = c.try_sql(&format!("{seq} {q}"))?;
        if by_index != by_seq {
            return Err(format!(
                "{cond}: {index} gives {by_index}, seq scan {by_seq}"
            ));
        }
        out.push(by_index);
    }
    let amcheck = c.try_sql(
        "SELECT (SELECT count(*) FROM verify_heapam('ib')), bt_index_check('ib_pkey', true)",
    )?;
    if !amcheck.starts_with("0|") {
        return Err(format!("amcheck found corruption: {amcheck}"));
    }
    Ok(out)
}

/// Blocks of index `rel` (metapage excluded) whose LSN is at or after `redo`.
fn blocks_changed_since(c: &PgCluster, rel: &str, redo: &str) -> Vec<u64> {
    c.sql(&format!(
        "SELECT b FROM generate_series(1, pg_relation_size('{rel}') / 8192 - 1) b \
         WHERE (page_header(get_raw_page('{rel}', b::int))).lsn >= '{redo}' ORDER BY b"
    ))
    .lines()
    .filter_map(|l| l.trim().parse().ok())
    .collect()
}

/// Tears block `blk` of `file` with the first other block whose second half differs.
pub(crate) fn tear_with_any(file: &std::path::Path, blk: u64) {
    let f = std::fs::File::open(file).expect("open");
    let half = |b: u64| {
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, b * 8192 + 4096).expect("read");
        buf
    };
    let blocks = f.metadata().expect("metadata").len() / 8192;
    let mine = half(blk);
    let other = (0..blocks)
        .find(|&o| o != blk && half(o) != mine)
        .unwrap_or_else(|| panic!("{}: no block to tear {blk} with", file.display()));
    tear(file, blk, other);
}

/// BRIN (regular and revmap pages, replayed from BRIN records), GIN, GiST, SP-GiST and bloom
/// (generic WAL) index pages changed after the checkpoint are torn; repair rebuilds them and the indexes answer
/// as a sequential scan does.
#[test]
fn repair_restores_torn_brin_gin_and_bloom_index_pages() {
    let mut c = PgCluster::start_fpw_off(&["-k"]);
    c.sql("CREATE EXTENSION amcheck; CREATE EXTENSION bloom; CREATE EXTENSION pageinspect");
    c.sql(
        "CREATE TABLE ib (id int PRIMARY KEY, t int, a int, b int, tags int[], pad text) \
         WITH (fillfactor = 70); \
         INSERT INTO ib SELECT g, g, g % 1000, g % 37, ARRAY[g % 50, 1000 + g % 7], \
         repeat('p', 100) FROM generate_series(1, 20000) g",
    );
    c.sql("CREATE INDEX ib_brin ON ib USING brin (t) WITH (pages_per_range = 2)");
    c.sql("CREATE INDEX ib_bloom ON ib USING bloom (a, b) WITH (length = 64)");
    // Entry tree and posting trees (each key has hundreds to thousands of rows).
    c.sql("CREATE INDEX ib_gin ON ib USING gin (tags) WITH (fastupdate = off)");
    c.sql("CREATE INDEX ib_gist ON ib USING gist (point(t, b))");
    // Hash: ~23 rows per key, the inserts and deletes below split buckets and chain
    // overflow pages.
    c.sql("CREATE INDEX ib_hash ON ib USING hash ((id % 997))");
    c.sql("CREATE INDEX ib_spgist ON ib USING spgist (point(a, b))");
    let (_tmp, helper_dir, mut h) = stream_helper(&c, "repair-brin");
    c.sql("CHECKPOINT");
    let redo = c.sql("SELECT redo_lsn FROM pg_control_checkpoint()");
    // Streamed: summaries widened in place, new ranges summarized (revmap), bloom tuples
    // added and, by VACUUM, bloom pages rewritten without the deleted rows.
    c.sql("UPDATE ib SET t = t + 100000 WHERE id % 100 = 0");
    c.sql(
        "INSERT INTO ib SELECT g, g, g % 1000, g % 37, ARRAY[g % 50, 1000 + g % 7, 5000 + g], \
         repeat('p', 100) FROM generate_series(20001, 22000) g",
    );
    c.sql("SELECT brin_summarize_new_values('ib_brin')");
    c.sql("DELETE FROM ib WHERE id % 7 = 0");
    c.sql("VACUUM ib");
    h.kill9();
    // Only in pg_wal.
    c.sql("UPDATE ib SET a = a + 1 WHERE id % 13 = 0");
    c.sql(
        "INSERT INTO ib SELECT g, g, g % 1000, g % 37, ARRAY[g % 50, 5000 + g], \
         repeat('p', 100) FROM generate_series(22001, 23000) g",
    );
    c.sql("SELECT brin_summarize_new_values('ib_brin')");
    c.sql("UPDATE ib SET t = t + 200000 WHERE id % 111 = 1");
    c.sql("UPDATE ib SET tags = tags || 77 WHERE id % 41 = 2");
    let expected = ib_index_results(&c).unwrap_or_else(|e| panic!("before the crash: {e}"));
    let brin = c.sql("SELECT pg_relation_filepath('ib_brin')");
    let bloom = c.sql("SELECT pg_relation_filepath('ib_bloom')");
    let brin_changed = blocks_changed_since(&c, "ib_brin", &redo);
    let bloom_changed = blocks_changed_since(&c, "ib_bloom", &redo);
    let gin = c.sql("SELECT pg_relation_filepath('ib_gin')");
    let gin_changed = blocks_changed_since(&c, "ib_gin", &redo);
    let gist = c.sql("SELECT pg_relation_filepath('ib_gist')");
    let gist_changed = blocks_changed_since(&c, "ib_gist", &redo);
    let hash = c.sql("SELECT pg_relation_filepath('ib_hash')");
    let hash_changed = blocks_changed_since(&c, "ib_hash", &redo);
    let spgist = c.sql("SELECT pg_relation_filepath('ib_spgist')");
    let spgist_changed = blocks_changed_since(&c, "ib_spgist", &redo);
    c.crash();

    // To tear: every changed BRIN page (revmap and regular), three changed bloom pages and
    // six changed GIN pages (entry and posting-tree pages) that are on disk.
    let on_disk = |f: &str, b: u64| std::fs::metadata(c.data.join(f)).unwrap().len() > b * 8192;
    let brin_torn: Vec<u64> = brin_changed
        .iter()
        .copied()
        .filter(|&b| on_disk(&brin, b))
        .collect();
    let bloom_torn: Vec<u64> = bloom_changed
        .iter()
        .copied()
        .filter(|&b| on_disk(&bloom, b))
        .take(3)
        .collect();
    let gin_torn: Vec<u64> = gin_changed
        .iter()
        .copied()
        .filter(|&b| on_disk(&gin, b))
        .take(6)
        .collect();
    // Six changed GiST pages other than the root: the lowest blocks, leaves of the build
    // that VACUUM changed with deltas (pages split after the checkpoint would be rebuilt
    // from their WILL_INIT record and not stay torn).
    let gist_torn: Vec<u64> = gist_changed
        .iter()
        .copied()
        .filter(|&b| on_disk(&gist, b))
        .take(6)
        .collect();
    assert!(
        !brin_torn.is_empty() && !bloom_torn.is_empty() && !gin_torn.is_empty(),
        "changed BRIN {brin_changed:?}, bloom {bloom_changed:?}, GIN {gin_changed:?}"
    );
    assert!(!gist_torn.is_empty(), "changed GiST {gist_changed:?}");
    // Six changed hash pages (bucket and overflow pages; the metapage is not in the list).
    let hash_torn: Vec<u64> = hash_changed
        .iter()
        .copied()
        .filter(|&b| on_disk(&hash, b))
        .take(6)
        .collect();
    assert!(!hash_torn.is_empty(), "changed hash {hash_changed:?}");
    eprintln!(
        "torn hash blocks {hash_torn:?} (of {} changed)",
        hash_changed.len()
    );
    // Six changed SP-GiST pages past the roots (blocks 1 and 2): leaves of the build that
    // the inserts and VACUUM changed with deltas.
    let spgist_torn: Vec<u64> = spgist_changed
        .iter()
        .copied()
        .filter(|&b| b > 2 && on_disk(&spgist, b))
        .take(6)
        .collect();
    assert!(
        !spgist_torn.is_empty(),
        "changed SP-GiST {spgist_changed:?}"
    );
    eprintln!(
        "torn SP-GiST blocks {spgist_torn:?} (of {} changed)",
        spgist_changed.len()
    );
    eprintln!(
        "torn GiST blocks {gist_torn:?} (of {} changed)",
        gist_changed.len()
    );
    eprintln!(
        "torn BRIN blocks {brin_torn:?} (changed {brin_changed:?}), bloom blocks \
         {bloom_torn:?} (of {} changed), GIN blocks {gin_torn:?} (of {} changed)",
        bloom_changed.len(),
        gin_changed.len()
    );
    let tear_in = |data: &std::path::Path, file: &str, blocks: &[u64]| {
        for &b in blocks {
            tear_with_any(&data.join(file), b);
        }
    };

    // Controls, one per index kind torn: without repair recovery fails or the indexes
    // answer differently.
    for (file, blocks) in [
        (&brin, &brin_torn),
        (&bloom, &bloom_torn),
        (&gin, &gin_torn),
        (&gist, &gist_torn),
        (&hash, &hash_torn),
        (&spgist, &spgist_torn),
    ] {
        let mut control = c.copy_stopped();
        tear_in(&control.data, file, blocks);
        let outcome = match control.try_start() {
            Err(e) => Err(format!("startup failed:\n{e}")),
            Ok(()) => ib_index_results(&control).and_then(|got| {
                if got == expected {
                    Ok(())
                } else {
                    Err(format!("results differ: {got:?} != {expected:?}"))
                }
            }),
        };
        control.stop();
        assert!(
            outcome.is_err(),
            "torn {file} {blocks:?} did not matter without repair: the test cannot fail"
        );
        eprintln!(
            "without repair, {file} torn: {}",
            outcome.err().unwrap_or_default()
        );
    }
    tear_in(&c.data, &brin, &brin_torn);
    tear_in(&c.data, &bloom, &bloom_torn);
    tear_in(&c.data, &gin, &gin_torn);
    tear_in(&c.data, &gist, &gist_torn);
    tear_in(&c.data, &hash, &hash_torn);
    tear_in(&c.data, &spgist, &spgist_torn);

    let (code, stdout, stderr) = run_repair(&helper_dir, &c.data, &[]);
    assert_eq!(code, Some(0), "repair failed:\n{stdout}\n{stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    eprintln!("{line}");
    assert!(
        summary_num(line, " pages changed since written")
            >= (brin_torn.len()
                + bloom_torn.len()
                + gin_torn.len()
                + gist_torn.len()
                + hash_torn.len()
                + spgist_torn.len()) as u64,
        "{line}"
    );
    assert_eq!(summary_num(line, " unrepairable"), 0, "{line}");
    assert_eq!(summary_num(line, " errors"), 0, "{line}");

    c.try_start()
        .unwrap_or_else(|e| panic!("recovery after repair: {e}"));
    let got = ib_index_results(&c).unwrap_or_else(|e| panic!("after repair: {e}"));
    assert_eq!(got, expected, "after repair");
    eprintln!("index = seq scan = before the crash: {got:?}");
}
