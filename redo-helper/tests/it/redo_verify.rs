//! The Rust redo against PostgreSQL 15 itself: a throwaway cluster with full_page_writes
//! off and wal_consistency_checking = all (every record carries the image of every page it
//! touches, as of after the record), the helper bootstrapped and streaming, a workload that
//! exercises heap, heap2, btree, sequence, storage and transaction records, then
//! `redo-helper verify --pgdata`: every page after every record equals the consistency
//! image (masked as PostgreSQL masks it), and every page the store holds equals the data
//! files after a CHECKPOINT.

use crate::common::{PgCluster, TempDir, pg_command};
use crate::support::{HELPER_BIN, HelperProcess, lsn, status_lsn};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) fn cluster() -> PgCluster {
    PgCluster::start(
        &[],
        &[
            "listen_addresses = '127.0.0.1'",
            "wal_level = replica",
            "max_wal_senders = 10",
            "full_page_writes = off",
            "wal_consistency_checking = 'all'",
            "autovacuum = off",
            "shared_buffers = 64MB",
        ],
    )
}

/// A psql session kept open (for locks held across statements of another session).
struct Session {
    child: Child,
}

impl Session {
    fn open(c: &PgCluster) -> Session {
        let child = pg_command("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-h"])
            .arg(&c.root)
            .args(["-p", &c.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql session");
        Session { child }
    }

    fn send(&mut self, sql: &str) {
        let stdin = self.child.stdin.as_mut().expect("session stdin");
        writeln!(stdin, "{sql}").expect("write to psql");
        stdin.flush().expect("flush psql");
        // Let the server execute it before the other session goes on.
        std::thread::sleep(Duration::from_millis(400));
    }

    fn close(mut self) {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().expect("psql session exit");
        assert!(
            out.status.success(),
            "psql session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Starts the helper and waits until it has bootstrapped and streams.
pub(crate) fn start_helper(c: &PgCluster, dir: &TempDir) -> HelperProcess {
    let mut h = HelperProcess::spawn(
        &c.conninfo(),
        &dir.path().join("helper"),
        &dir.path().join("helper.log"),
    );
    h.wait_status("bootstrap", Duration::from_secs(120), |s| {
        s["state"] == "streaming" && s["consistent"] == true
    });
    h
}

/// CHECKPOINT, wait until the helper has everything, stop it.
pub(crate) fn checkpoint_and_stop(c: &PgCluster, mut h: HelperProcess) {
    checkpoint_and_catch_up(c, &mut h);
    h.kill9();
}

/// CHECKPOINT and wait until the helper has decoded everything up to after it.
pub(crate) fn checkpoint_and_catch_up(c: &PgCluster, h: &mut HelperProcess) {
    c.sql("CHECKPOINT");
    // A small record after the checkpoint so its end is flushed and streamed.
    c.sql("SELECT pg_switch_wal()");
    let target = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    h.wait_status("catch-up", Duration::from_secs(180), |s| {
        status_lsn(s, "flush_lsn") >= target && status_lsn(s, "decoded_lsn") >= target
    });
}

pub(crate) struct VerifyRun {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) records: u64,
    pub(crate) pages: u64,
    pub(crate) mismatches: u64,
    pub(crate) unreadable: u64,
}

impl VerifyRun {
    /// verify's "record types:" line, without the label.
    pub(crate) fn record_types(&self) -> &str {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("record types: "))
            .unwrap_or_default()
    }

    /// The count of each of `types` (e.g. `"Gin/INSERT"`), asserting that the workload
    /// produced every one (the per-AM redo tests).
    pub(crate) fn every_type_replayed(&self, types: &[&'static str]) -> Vec<(&'static str, u64)> {
        let counts: Vec<(&str, u64)> = types.iter().map(|t| (*t, self.type_count(t))).collect();
        for (name, n) in &counts {
            assert!(
                *n > 0,
                "the workload did not produce {name}: {}",
                self.record_types()
            );
        }
        counts
    }

    /// How many records of type `name` (e.g. `"Gin/INSERT"`) were replayed: the count
    /// after exactly that name in the "record types:" line, 0 when absent.
    pub(crate) fn type_count(&self, name: &str) -> u64 {
        let prefix = format!("{name} ");
        self.record_types()
            .split(", ")
            .find_map(|t| t.strip_prefix(prefix.as_str()))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

pub(crate) fn run_verify(data_dir: &Path, pgdata: &Path) -> VerifyRun {
    run_verify_with(data_dir, pgdata, &["--workers", "1"])
}

/// `verify --pgdata` that must find 0 mismatches and 0 unreadable pages, and succeed.
pub(crate) fn run_verify_clean(data_dir: &Path, pgdata: &Path) -> VerifyRun {
    let run = run_verify(data_dir, pgdata);
    assert_eq!(run.mismatches, 0, "mismatches:\n{}", run.stdout);
    assert_eq!(run.unreadable, 0, "unreadable pages:\n{}", run.stdout);
    assert!(run.ok, "verify failed:\n{}", run.stdout);
    run
}

pub(crate) fn run_verify_with(data_dir: &Path, pgdata: &Path, args: &[&str]) -> VerifyRun {
    let out = Command::new(HELPER_BIN)
        .arg("verify")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--pgdata")
        .arg(pgdata)
        .output()
        .expect("run redo-helper verify");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("verify: "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}\n{stderr}"));
    let num = |label: &str| -> u64 {
        let rest = &last[last
            .find(label)
            .unwrap_or_else(|| panic!("{label} in {last}"))
            + label.len()..];
        rest.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("number after {label} in {last}"))
    };
    VerifyRun {
        ok: out.status.success(),
        records: num("records replayed"),
        pages: num("pages verified"),
        mismatches: num("mismatches"),
        unreadable: num("unreadable pages"),
        stdout,
    }
}

/// The workload of issue 6.
fn workload(c: &PgCluster) {
    // Inserts, a wide btree index with random keys (splits up to a level-2 root), a
    // low-cardinality index (deduplication), a unique primary key.
    c.sql(
        "CREATE TABLE t (id int PRIMARY KEY, k text, grp int, v int, pad text) \
         WITH (fillfactor = 70)",
    );
    c.sql("CREATE INDEX t_k ON t (k)");
    c.sql("CREATE INDEX t_grp ON t (grp)");
    c.sql(
        "INSERT INTO t SELECT g, repeat(md5(g::text), 4), g % 7, g, repeat('p', 60) \
         FROM generate_series(1, 12000) g",
    );
    // HOT updates (v is not indexed) with prefix and suffix compression on the same page.
    for i in 0..6 {
        c.sql(&format!(
            "UPDATE t SET v = v + 1 WHERE id % 10 = {i} AND id < 4000"
        ));
    }
    // Non-HOT updates (indexed column changes) and bottom-up index deletion.
    c.sql("UPDATE t SET grp = grp + 1 WHERE id BETWEEN 4000 AND 6000");
    for _ in 0..3 {
        c.sql("UPDATE t SET k = k || 'x' WHERE id BETWEEN 6000 AND 6600");
    }
    // Deletes, and an index scan that marks dead index entries (LP_DEAD).
    c.sql("DELETE FROM t WHERE id % 13 = 0");
    c.sql("SET enable_seqscan = off; SELECT count(*) FROM t WHERE grp = 3");
    // Aborted transactions: inserts, updates and a created table are rolled back.
    let mut s = Session::open(c);
    s.send("BEGIN;");
    s.send("INSERT INTO t SELECT g, 'aborted', 1, 1, 'x' FROM generate_series(20001, 20500) g;");
    s.send("UPDATE t SET v = -1 WHERE id < 100;");
    s.send("CREATE TABLE gone_on_abort (a int); INSERT INTO gone_on_abort VALUES (1);");
    s.send("ROLLBACK;");
    s.close();
    // Unique checks: ON CONFLICT (speculative insertion, confirm and super-delete), and a
    // unique violation that aborts after the heap insert.
    c.sql(
        "INSERT INTO t SELECT g, 'spec', 1, 1, 'x' FROM generate_series(11990, 12100) g \
         ON CONFLICT (id) DO NOTHING",
    );
    c.sql(
        "INSERT INTO t SELECT g, 'upsert', 2, 2, 'y' FROM generate_series(11900, 12200) g \
         ON CONFLICT (id) DO UPDATE SET v = excluded.v + t.v",
    );
    let dup = pg_command("psql")
        .args(["-X", "-q", "-d", "postgres", "-h"])
        .arg(&c.root)
        .args([
            "-p",
            &c.port.to_string(),
            "-c",
            "INSERT INTO t VALUES (1, 'dup', 0, 0, 'x')",
        ])
        .output()
        .expect("psql");
    assert!(!dup.status.success(), "duplicate key must fail");
    // Row locks from two sessions: FOR SHARE from both (multixact), FOR UPDATE, and
    // KEY SHARE on a row another transaction updated (lock of an updated tuple chain).
    let mut a = Session::open(c);
    a.send(
        "BEGIN; SELECT count(*) FROM (SELECT id FROM t WHERE id BETWEEN 100 AND 140 FOR SHARE) l;",
    );
    c.sql("SELECT count(*) FROM (SELECT id FROM t WHERE id BETWEEN 120 AND 160 FOR SHARE) l");
    a.send("SELECT count(*) FROM (SELECT id FROM t WHERE id BETWEEN 200 AND 220 FOR UPDATE) l;");
    a.send("UPDATE t SET v = v + 100 WHERE id BETWEEN 300 AND 320;");
    c.sql("SELECT count(*) FROM (SELECT id FROM t WHERE id BETWEEN 300 AND 320 FOR KEY SHARE) l");
    a.send("COMMIT;");
    a.close();
    // Vacuum (prune, vacuum, VM set), then freeze (VACUUM FREEZE), then clear the VM bits
    // again with updates, deletes, inserts and locks.
    c.sql("VACUUM t");
    c.sql("VACUUM (FREEZE) t");
    c.sql("UPDATE t SET v = v + 1 WHERE id % 97 = 1");
    c.sql("DELETE FROM t WHERE id % 89 = 2");
    c.sql("INSERT INTO t SELECT g, md5(g::text), 1, 1, 'z' FROM generate_series(30001, 30050) g");
    c.sql("SELECT count(*) FROM (SELECT id FROM t WHERE id % 83 = 3 FOR UPDATE) l");
    c.sql("SELECT count(*) FROM (SELECT id FROM t WHERE id % 79 = 4 FOR KEY SHARE) l");
    // Posting list splits: free space in early heap pages gets TIDs inside posting lists.
    c.sql(
        "INSERT INTO t SELECT g, md5(g::text), g % 7, g, 'q' FROM generate_series(40001, 41000) g",
    );
    // Btree page deletion after a mass delete, twice, then page reuse by new splits.
    c.sql("DELETE FROM t WHERE id BETWEEN 1000 AND 9000");
    c.sql("VACUUM t");
    c.sql("VACUUM t");
    c.sql(
        "INSERT INTO t SELECT g, repeat(md5(g::text), 4), g % 5, g, 'r' \
         FROM generate_series(50001, 56000) g",
    );
    c.sql("DELETE FROM t WHERE id > 40000");
    c.sql("VACUUM t");
    // Heap and VM truncation at the end of a table (smgr TRUNCATE) by VACUUM.
    c.sql("CREATE TABLE tail (id int, pad text)");
    c.sql("INSERT INTO tail SELECT g, repeat('t', 100) FROM generate_series(1, 20000) g");
    c.sql("VACUUM tail");
    c.sql("DELETE FROM tail WHERE id > 3000");
    c.sql("VACUUM tail");
    // Sequences: nextval (logged every 32 values), setval, restart, a serial column.
    c.sql("CREATE SEQUENCE s");
    c.sql("SELECT count(nextval('s')) FROM generate_series(1, 500)");
    c.sql("SELECT setval('s', 10000)");
    c.sql("ALTER SEQUENCE s RESTART WITH 5");
    c.sql("SELECT nextval('s')");
    // TOAST (incompressible values) and COPY (multi_insert), COPY FREEZE (all-frozen set).
    c.sql("CREATE TABLE big (id serial PRIMARY KEY, body text)");
    c.sql(
        "INSERT INTO big (body) SELECT string_agg(md5(random()::text || i::text), '') \
         FROM generate_series(1, 40) r, generate_series(1, 300) i GROUP BY r",
    );
    c.sql("UPDATE big SET body = body || 'tail' WHERE id % 3 = 0");
    c.sql("DELETE FROM big WHERE id % 4 = 0");
    c.sql("CREATE TABLE c (id int, note text)");
    c.sql("COPY c (id) FROM PROGRAM 'seq 1 20000'");
    c.sql(
        "BEGIN; CREATE TABLE cf (id int, note text); \
         COPY cf (id) FROM PROGRAM 'seq 1 5000' WITH (FREEZE); COMMIT",
    );
    // TRUNCATE (new relfilenode, the old one dropped at commit) and DROP TABLE.
    c.sql("TRUNCATE c");
    c.sql("INSERT INTO c SELECT g, 'after truncate' FROM generate_series(1, 300) g");
    c.sql("CREATE TABLE dropme AS SELECT g AS id FROM generate_series(1, 3000) g");
    c.sql("DROP TABLE dropme");
    c.sql("VACUUM");
}

#[test]
fn redo_matches_consistency_images_and_data_files() {
    let c = cluster();
    let dir = TempDir::new("redo-verify");
    let h = start_helper(&c, &dir);
    workload(&c);
    checkpoint_and_stop(&c, h);
    let run = run_verify(&dir.path().join("helper"), &c.data);
    assert_eq!(run.mismatches, 0, "mismatches:\n{}", run.stdout);
    assert_eq!(run.unreadable, 0, "unreadable pages:\n{}", run.stdout);
    assert!(run.ok, "verify failed:\n{}", run.stdout);
    assert!(
        run.records > 20_000,
        "too few records replayed: {}",
        run.records
    );
    assert!(run.pages > 20_000, "too few pages verified: {}", run.pages);
    // The parallel replay (pages partitioned over two threads) gives the same result; so
    // does one over three threads where the decoding thread hands pages over to the others
    // after every batch (in normal runs only when they wait for work), and one where it
    // also takes pages back, as copies, every third batch (in normal runs only from a
    // thread that fell behind).
    for args in [
        &["--workers", "2"][..],
        &["--workers", "3", "--hand-over-every", "1"][..],
        &[
            "--workers",
            "3",
            "--hand-over-every",
            "1",
            "--take-back-every",
            "3",
        ][..],
    ] {
        let par = run_verify_with(&dir.path().join("helper"), &c.data, args);
        assert!(par.ok, "parallel verify {args:?} failed:\n{}", par.stdout);
        assert_eq!(
            (par.records, par.pages, par.mismatches, par.unreadable),
            (run.records, run.pages, 0, 0),
            "parallel verify {args:?}"
        );
        if args.contains(&"--take-back-every") {
            let back = par
                .stdout
                .lines()
                .find_map(|l| l.split(" (").nth(1)?.strip_suffix(" times taken back)"))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            assert!(back > 10, "pages taken back {back} times:\n{}", par.stdout);
        } else if args.contains(&"--hand-over-every") {
            assert!(
                par.stdout.contains("parallel replay: 3 threads, 10 hand-overs of pages, the decoding thread kept 8 of 256"),
                "{}",
                par.stdout
            );
        }
    }
    // The record types of the workload were all exercised (and checked page by page).
    let types = run
        .stdout
        .lines()
        .find(|l| l.starts_with("record types: "))
        .unwrap_or_default()
        .to_string();
    for kind in [
        "Heap/INSERT ",
        "Heap/INSERT+INIT ",
        "Heap/UPDATE ",
        "Heap/HOT_UPDATE ",
        "Heap/DELETE ",
        "Heap/LOCK ",
        "Heap/HEAP_CONFIRM ",
        "Heap/INPLACE ",
        "Heap2/PRUNE ",
        "Heap2/VACUUM ",
        "Heap2/FREEZE_PAGE ",
        "Heap2/VISIBLE ",
        "Heap2/MULTI_INSERT",
        "Heap2/LOCK_UPDATED ",
        "Btree/INSERT_LEAF ",
        "Btree/INSERT_UPPER ",
        "Btree/SPLIT_L ",
        "Btree/SPLIT_R ",
        "Btree/NEWROOT ",
        "Btree/DEDUP ",
        "Btree/VACUUM ",
        "Btree/MARK_PAGE_HALFDEAD ",
        "Btree/UNLINK_PAGE ",
        "Sequence/LOG ",
        "Storage/CREATE ",
        "Storage/TRUNCATE ",
        "Transaction/ABORT ",
    ] {
        assert!(
            types.contains(kind),
            "workload did not produce {kind}: {types}"
        );
    }
}

/// An index access method whose records the redo engine does not replay: the rmgr name
/// verify reports, the `USING` method for an index on a `point` column, and a block of such
/// an index that inserts after the build change (GiST's root is block 0; SP-GiST's block 0
/// is its metapage, which only the build writes, its root block 1). `None` once every
/// candidate is replayed; the unit test
/// `store::index::tests::unsupported_rmgrs_are_unreadable_not_guessed` still covers custom
/// resource managers, which no built-in AM can stand in for.
pub(crate) struct UnreplayedAm {
    pub(crate) rmgr: &'static str,
    pub(crate) using: &'static str,
    pub(crate) changed_block: u32,
}

pub(crate) fn unreplayed_index_am() -> Option<UnreplayedAm> {
    use redo_helper::wal::rmgr::{RM_GIST_ID, RM_SPGIST_ID};
    [
        (RM_GIST_ID, "Gist", "gist", 0),
        (RM_SPGIST_ID, "SPGist", "spgist", 1),
    ]
    .into_iter()
    .find(|(rmid, ..)| !redo_helper::rmgr_replayed(*rmid))
    .map(|(_, rmgr, using, changed_block)| UnreplayedAm {
        rmgr,
        using,
        changed_block,
    })
}

#[test]
fn unreplayed_index_pages_are_unreadable_while_heap_and_btree_stay_exact() {
    let Some(am) = unreplayed_index_am() else {
        eprintln!("every built-in index access method is replayed: nothing to mark unreadable");
        return;
    };
    let c = cluster();
    let dir = TempDir::new("redo-unreplayed");
    let h = start_helper(&c, &dir);
    c.sql("CREATE TABLE docs (id int PRIMARY KEY, p point)");
    c.sql(&format!(
        "CREATE INDEX docs_p ON docs USING {} (p)",
        am.using
    ));
    c.sql("INSERT INTO docs SELECT g, point(g % 97, g / 97) FROM generate_series(1, 5000) g");
    c.sql("UPDATE docs SET p = point(p[0] + 1000, p[1]) WHERE id % 5 = 0");
    c.sql("DELETE FROM docs WHERE id % 11 = 0");
    c.sql("VACUUM docs");
    checkpoint_and_stop(&c, h);
    let run = run_verify(&dir.path().join("helper"), &c.data);
    assert_eq!(run.mismatches, 0, "heap/btree mismatches:\n{}", run.stdout);
    assert!(run.ok, "verify failed:\n{}", run.stdout);
    assert!(
        run.unreadable > 0,
        "{} index pages must be unreadable:\n{}",
        am.using,
        run.stdout
    );
    let named = format!("first unreadable page: redo of {} ", am.rmgr);
    assert!(
        run.stdout.contains(&named),
        "the error names the {} record:\n{}",
        am.rmgr,
        run.stdout
    );
    assert!(run.records > 1_000 && run.pages > 1_000);
}
