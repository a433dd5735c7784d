//! GetPage@LSN end to end against a real PostgreSQL 15 cluster with full_page_writes off:
//! the helper's Rust redo and image generation serve every page exactly as the cluster has
//! it after CHECKPOINT, historical reads equal the replay of the whole chain, and image
//! generation keeps reads bounded (lost while paused, back after resume), at historical LSNs
//! too.

use crate::common::{PgCluster, TempDir};
use crate::support;
use crate::support::{HelperProcess, http, lsn, status_lsn};
use std::time::{Duration, Instant};

/// Waits until the helper has decoded everything the server has flushed and image
/// generation has nothing queued.
fn wait_settled(c: &PgCluster, h: &mut HelperProcess) -> serde_json::Value {
    let target = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    h.wait_status("catch-up", Duration::from_secs(120), |s| {
        status_lsn(s, "decoded_lsn") >= target
    });
    let mut last = None;
    h.wait_status("image generation drained", Duration::from_secs(120), |s| {
        let generated = s["images_generated"].as_u64();
        let stable = s["imagegen_queue_depth"].as_u64() == Some(0) && last == generated;
        last = generated;
        stable
    })
}

/// A helper at image threshold 16 on `c`, with its data in `dir` and its log in `logs`,
/// once it streams.
fn streaming_helper(c: &PgCluster, dir: &std::path::Path, logs: &std::path::Path) -> HelperProcess {
    let mut h = HelperProcess::spawn_with(
        &c.conninfo(),
        dir,
        &logs.join("helper.log"),
        &["--image-threshold", "16"],
    );
    h.wait_status("streaming", Duration::from_secs(120), |s| {
        s["state"] == "streaming"
    });
    h
}

fn deltas(r: &support::HttpReply) -> u32 {
    r.header("x-deltas-replayed")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no x-deltas-replayed header in {}", r.headers))
}

fn get_page(h: &HelperProcess, path: &str) -> support::HttpReply {
    let r = http(&h.listen, "GET", path).expect("GET /page");
    assert_eq!(
        r.status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.body.len(), 8192);
    r
}

/// The workload issue 6 lists, in miniature, plus pgbench: inserts, HOT and non-HOT
/// updates, deletes, locks, vacuum (VM set), freeze, btree splits and page deletion,
/// sequences, TOAST, COPY, TRUNCATE and DROP.
fn mixed_workload(c: &PgCluster) {
    c.sql(
        "CREATE TABLE t (id serial PRIMARY KEY, k int, v text);
         CREATE INDEX t_k ON t (k);
         INSERT INTO t (k, v) SELECT g % 97, repeat('x', g % 300) FROM generate_series(1, 20000) g;",
    );
    c.sql("UPDATE t SET v = v || 'y' WHERE id % 7 = 0");
    c.sql("UPDATE t SET k = k + 1000 WHERE id % 11 = 0");
    c.sql("DELETE FROM t WHERE id % 5 = 0");
    c.sql("VACUUM t");
    c.sql("SELECT * FROM t WHERE id < 100 FOR UPDATE");
    c.sql("INSERT INTO t (k, v) SELECT 5, repeat(md5(g::text), 500) FROM generate_series(1, 50) g");
    c.sql("DELETE FROM t WHERE id BETWEEN 1000 AND 9000");
    c.sql("VACUUM FREEZE t");
    c.sql("UPDATE t SET v = 'z' WHERE id % 13 = 0");
    c.sql(
        "CREATE TABLE gone (a int); INSERT INTO gone SELECT generate_series(1, 5000);
         CREATE TABLE cut (a int); INSERT INTO cut SELECT generate_series(1, 5000);
         CREATE SEQUENCE s; SELECT nextval('s') FROM generate_series(1, 100);",
    );
    // The file lives in the cluster's own directory (not a fixed /tmp path other test runs share).
    let csv = c.root.join("copy.csv");
    let csv = csv.display();
    c.sql(&format!(
        "COPY (SELECT g, g FROM generate_series(1, 3000) g) TO '{csv}'"
    ));
    c.sql(&format!(
        "CREATE TABLE copied (a int, b int); COPY copied FROM '{csv}'"
    ));
    c.sql("DROP TABLE gone");
    c.sql("TRUNCATE cut");
    c.sql("INSERT INTO cut SELECT generate_series(1, 10)");
    c.sql("DELETE FROM t WHERE id > 15000");
    c.sql("VACUUM t");
}

#[test]
fn served_pages_equal_the_data_files_and_history_equals_the_full_chain() {
    let c = PgCluster::start_fpw_off(&[]);
    c.pgbench(&["-i", "-s", "2", "-q"]);
    let tmp = TempDir::new("serve-pages");
    let dir = tmp.path().join("helper");
    let mut h = streaming_helper(&c, &dir, tmp.path());
    mixed_workload(&c);
    c.pgbench(&["-c", "2", "-T", "8", "-n"]);
    c.sql("CHECKPOINT");
    let st = wait_settled(&c, &mut h);
    let generated = st["images_generated"].as_u64().unwrap_or(0);
    assert!(generated > 0, "no images generated: {st}");
    assert_eq!(st["image_failures"].as_u64(), Some(0), "{st}");

    // Served pages carry their replay cost; hot pgbench pages stay within the threshold.
    let branches = c.rel_path("pgbench_branches");
    let r = get_page(&h, &format!("/page/{branches}/main/0?cache=none"));
    assert!(
        deltas(&r) <= 16,
        "branches page replayed {} deltas",
        deltas(&r)
    );
    // A dropped relation's pages are gone (404 with the reason).
    let unknown = http(&h.listen, "GET", "/page/1663/5/999999999/main/0").expect("GET");
    assert_eq!(unknown.status, 404);

    // Stop the helper (kill -9: the store must recover) and check it offline.
    h.kill9();
    let check = support::run_check(&dir, &c.data, 1000);
    let summary = &check.line;
    let num = |after: &str| check.num(after);
    assert!(num(" pages compared") > 1000, "{summary}");
    assert!(
        num(" removed") > 0,
        "the dropped/truncated pages: {summary}"
    );
    assert!(num(" served from generated") > 0, "{summary}");
    assert_eq!(num(" samples"), 1000, "{summary}");
    assert!(num(" started from generated images)") > 0, "{summary}");
    // Generation drained: a read at any LSN replays at most the threshold, historical
    // ones included (images along each chain, not only at its newest change).
    assert!(num(" with images vs") <= 16, "{summary}");
}

#[test]
fn image_generation_bounds_reads_and_the_bound_returns_after_a_pause() {
    let c = PgCluster::start_fpw_off(&[]);
    c.pgbench(&["-i", "-s", "1", "-q"]);
    let tmp = TempDir::new("bounded-reads");
    let mut h = streaming_helper(&c, &tmp.path().join("helper"), tmp.path());
    let branches = format!("/page/{}/main/0", c.rel_path("pgbench_branches"));
    let tellers = format!("/page/{}/main/0", c.rel_path("pgbench_tellers"));
    c.pgbench(&["-c", "2", "-t", "500", "-n"]);
    wait_settled(&c, &mut h);
    for page in [&branches, &tellers] {
        let r = get_page(&h, &format!("{page}?cache=none"));
        assert!(
            deltas(&r) <= 16,
            "{page}: {} deltas with generation on",
            deltas(&r)
        );
    }

    // Paused: the chain of the hot page grows with every transaction.
    let paused = http(&h.listen, "POST", "/imagegen/pause").expect("pause");
    assert_eq!(paused.status, 200);
    c.pgbench(&["-c", "2", "-t", "100", "-n"]);
    // A point in the middle of the chain the pause lets grow.
    let mid = c.sql("SELECT pg_current_wal_flush_lsn()");
    c.pgbench(&["-c", "2", "-t", "100", "-n"]);
    let target = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    let st = h.wait_status("catch-up", Duration::from_secs(60), |s| {
        status_lsn(s, "decoded_lsn") >= target
    });
    assert_eq!(st["imagegen_paused"], true);
    assert!(st["imagegen_queue_depth"].as_u64().unwrap_or(0) > 0, "{st}");
    let at = st["decoded_lsn"].as_str().unwrap_or_default().to_string();
    let long = get_page(&h, &format!("{branches}?cache=none&lsn={at}"));
    assert!(
        deltas(&long) > 100,
        "paused generation should leave a long chain, got {}",
        deltas(&long)
    );
    // Still exact: the same page from the whole chain.
    let full = get_page(&h, &format!("{branches}?images=none&lsn={at}"));
    assert!(
        long.body == full.body,
        "served page differs from the full chain"
    );

    // Resumed: the queue drains and the bound is back.
    let resumed = http(&h.listen, "POST", "/imagegen/resume").expect("resume");
    assert_eq!(resumed.status, 200);
    let started = Instant::now();
    wait_settled(&c, &mut h);
    let r = get_page(&h, &format!("{branches}?cache=none"));
    assert!(
        deltas(&r) <= 16,
        "{} deltas after resume ({:?} to drain)",
        deltas(&r),
        started.elapsed()
    );
    // And at an older LSN inside the long chain: generation stored images along it, not
    // only at its newest change.
    let old = get_page(&h, &format!("{branches}?cache=none&lsn={mid}"));
    assert!(
        deltas(&old) <= 16,
        "{} deltas at {mid}, in the middle of the chain generated after the pause",
        deltas(&old)
    );
    let full = get_page(&h, &format!("{branches}?images=none&lsn={mid}"));
    assert!(
        old.body == full.body,
        "page at {mid} from an intermediate image differs from the full chain"
    );
    let metrics = h.metrics().unwrap_or_default();
    assert!(
        metrics.contains("redo_helper_deltas_per_read"),
        "metrics: {metrics}"
    );
}

/// A chain that a WAL image closes before generation reaches it, of exactly threshold + 1
/// deltas: a read at its last change replays at most the threshold (the page is stored
/// there too, not only every threshold + 1 deltas along the chain), and equals the page
/// rebuilt from the whole chain. Found by the random history check above, which hit such a
/// chain in one run of several; here the chain is built on purpose.
#[test]
fn a_closed_chain_of_threshold_plus_one_deltas_is_bounded_at_its_last_change() {
    let c = PgCluster::start_fpw_off(&[]);
    // One row on one page: each update below is one HOT update of block 0 and nothing else
    // (the page stays far from full, so no pruning joins in).
    c.sql(
        "CREATE TABLE one (id int PRIMARY KEY, n int) WITH (autovacuum_enabled = off);
         INSERT INTO one VALUES (1, 0)",
    );
    let tmp = TempDir::new("closed-chain");
    let mut h = streaming_helper(&c, &tmp.path().join("helper"), tmp.path());
    // Generation waits, so the chain is still open, and unimaged, when the image closes it.
    let paused = http(&h.listen, "POST", "/imagegen/pause").expect("pause");
    assert_eq!(paused.status, 200);
    for _ in 0..17 {
        c.sql("UPDATE one SET n = n + 1 WHERE id = 1");
    }
    let last_change = c.sql("SELECT pg_current_wal_insert_lsn()");
    // Full-page writes on for a moment: the next change after a checkpoint carries the
    // page's image, which closes the chain of 17 deltas.
    c.sql("ALTER SYSTEM SET full_page_writes = on");
    c.sql("SELECT pg_reload_conf()");
    c.sql("CHECKPOINT");
    c.sql("UPDATE one SET n = n + 1 WHERE id = 1");
    c.sql("ALTER SYSTEM SET full_page_writes = off");
    c.sql("SELECT pg_reload_conf()");
    let resumed = http(&h.listen, "POST", "/imagegen/resume").expect("resume");
    assert_eq!(resumed.status, 200);
    let st = wait_settled(&c, &mut h);
    assert_eq!(st["image_failures"].as_u64(), Some(0), "{st}");

    let page = format!("/page/{}/main/0", c.rel_path("one"));
    let full = get_page(&h, &format!("{page}?images=none&lsn={last_change}"));
    assert_eq!(
        deltas(&full),
        17,
        "the chain was meant to be 17 deltas long"
    );
    let bounded = get_page(&h, &format!("{page}?cache=none&lsn={last_change}"));
    assert!(
        deltas(&bounded) <= 16,
        "{} deltas at the closed chain's last change {last_change}",
        deltas(&bounded)
    );
    assert!(
        bounded.body == full.body,
        "the page at {last_change} from an image differs from the whole chain"
    );
}
