//! Remote repair (`redo-helper repair --helper URL --pgdata PGDATA`): a cluster with data
//! checksums and full_page_writes off runs pgbench with the helper following over its TLS
//! listener; the helper then stops receiving (SIGSTOP: it falls behind, as a helper whose
//! connection broke), more work is done that only `pg_wal` has, and PostgreSQL crashes.
//! Pages are torn on disk like an interrupted 8 KB write leaves them (see `repair`). The
//! helper, running on (SIGCONT), is the only source of pages: the repair reads no file of
//! its data directory except the API token the operator copied.
//!
//! - Without repair the crash does not come back intact (the test can fail).
//! - Bad input is refused before anything is written: a running cluster, a wrong token, an
//!   unreachable helper, a helper of another cluster.
//! - After remote repair crash recovery completes, every table has the contents it had
//!   before the crash, amcheck (verify_heapam, bt_index_check with heapallindexed) is
//!   clean and an index scan returns what a sequential scan does.

use crate::common::{PgCluster, TempDir, free_port};
use crate::repair::{AMCHECK, DIGEST, blocks_of, recovers_intact, summary_num, tear};
use crate::support::{self, HELPER_BIN, HelperProcess};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs `redo-helper repair --helper helpers --pgdata pgdata flags`: (exit code, stdout,
/// stderr).
fn run_remote(pgdata: &Path, helpers: &str, flags: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(HELPER_BIN)
        .args(["repair", "--helper", helpers, "--pgdata"])
        .arg(pgdata)
        .args(flags)
        .output()
        .expect("redo-helper repair");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub(crate) fn signal(h: &HelperProcess, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &h.child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig}");
}

/// What an index scan and a sequential scan of pgbench_accounts return.
fn scans_agree(c: &PgCluster) {
    let q = "SELECT count(*), sum(abalance), sum(aid) FROM pgbench_accounts WHERE aid > 0";
    let index = c.sql(&format!(
        "SET enable_seqscan = off; SET enable_bitmapscan = off; {q}"
    ));
    let seq = c.sql(&format!(
        "SET enable_indexscan = off; SET enable_bitmapscan = off; SET enable_indexonlyscan = off; {q}"
    ));
    assert_eq!(index, seq, "index scan and sequential scan differ");
}

/// A cluster with data checksums and FPW off, pgbench's tables and `quiet` (see `repair`).
fn fpw_off_cluster(scale: &str) -> PgCluster {
    let c = PgCluster::start_fpw_off_version(15, &["-k"]);
    c.pgbench(&["-i", "-s", scale, "-q"]);
    c.sql("CREATE EXTENSION amcheck");
    c.sql(
        "CREATE TABLE quiet (id int PRIMARY KEY, v text); \
         INSERT INTO quiet SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 2000) g",
    );
    c
}

/// After the checkpoint: hint bits of `quiet` set (WAL-logged with checksums), then no
/// change of it; pgbench changes the others.
pub(crate) fn checkpoint_and_work(c: &PgCluster) {
    c.sql("SELECT count(*) FROM quiet");
    c.sql("CHECKPOINT");
    c.pgbench(&["-n", "-c", "2", "-t", "300"]);
}

/// More work (that the stopped helpers do not receive), the crash, and torn writes: three
/// pages of pgbench_accounts changed since the checkpoint and one of `quiet`. Returns the
/// tables' digest before the crash.
pub(crate) fn work_crash_and_tear(c: &mut PgCluster) -> String {
    c.pgbench(&["-n", "-c", "2", "-t", "200"]);
    c.sql("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 97 = 0");
    let digest = c.sql(DIGEST);
    let accounts = c
        .data
        .join(c.sql("SELECT pg_relation_filepath('pgbench_accounts')"));
    let quiet = c.data.join(c.sql("SELECT pg_relation_filepath('quiet')"));
    let changed = blocks_of(c, "pgbench_accounts", "aid % 97 = 0 AND aid > 20000");
    let quiet_blocks = blocks_of(c, "quiet", "true");
    assert!(changed.len() >= 3 && quiet_blocks.len() >= 3);
    c.crash();
    for &b in &changed[..3] {
        tear(&accounts, b, b + 1);
    }
    tear(&quiet, quiet_blocks[1], quiet_blocks[2]);
    digest
}

/// A successful remote repair's output, then PostgreSQL's recovery: the tables as before
/// the crash, amcheck clean, index and sequential scans equal.
pub(crate) fn assert_repaired(
    c: &mut PgCluster,
    digest: &str,
    code: Option<i32>,
    stdout: &str,
    stderr: &str,
) {
    eprintln!("{stderr}{stdout}");
    assert_eq!(code, Some(0), "remote repair failed:\n{stdout}\n{stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    let num = |after: &str| summary_num(line, after);
    assert!(
        num(" records taken from pg_wal") > 0,
        "the WAL the helpers did not receive is replayed: {line}"
    );
    assert!(num(" pages changed since written") >= 3, "{line}");
    assert!(num(" other pages checked") > 0, "{line}");
    assert!(
        line.contains("(checksum 1,"),
        "the torn quiet page fails its checksum and is fetched: {line}"
    );
    assert_eq!(num(" unrepairable"), 0, "{line}");
    assert_eq!(num(" errors"), 0, "{line}");
    if let Err(e) = recovers_intact(c, digest) {
        panic!("after remote repair: {e}\n{stdout}");
    }
    assert!(c.sql(AMCHECK).starts_with("0|"));
    scans_agree(c);
}

#[test]
fn remote_repair_restores_torn_pages_from_a_running_helper_over_tls() {
    let mut c = fpw_off_cluster("2");
    let tmp = TempDir::new("remote-repair");
    let d = tmp.path();
    crate::security::make_server_certificate(d);
    let helper_dir = d.join("helper");
    let mut h = HelperProcess::spawn_with(
        &c.conninfo(),
        &helper_dir,
        &d.join("helper.log"),
        &[
            "--tls-cert",
            d.join("server.pem").to_str().expect("path"),
            "--tls-key",
            d.join("server.key").to_str().expect("path"),
        ],
    );
    h.wait_status("streaming", Duration::from_secs(120), |s| {
        s["state"] == "streaming"
    });
    // The operator copies the helper's token to the PostgreSQL host.
    let token = d.join("token");
    std::fs::copy(&h.listen.token_file, &token).expect("copy token");
    let url = format!("https://127.0.0.1:{}", h.listen.port);
    let ca = d.join("ca.pem");
    let ca = ca.to_str().expect("path");
    let auth = [
        "--helper-token-file",
        token.to_str().expect("path"),
        "--helper-ca-file",
        ca,
    ];

    checkpoint_and_work(&c);
    let flushed = support::lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    h.wait_status("caught up", Duration::from_secs(60), |s| {
        support::status_lsn(s, "decoded_lsn") >= flushed
    });
    // A running cluster is refused.
    let (code, _, err) = run_remote(&c.data, &url, &auth);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("PostgreSQL is running"), "{err}");
    // The helper stops receiving: what follows is only in pg_wal.
    signal(&h, "-STOP");
    let digest = work_crash_and_tear(&mut c);
    signal(&h, "-CONT");

    // Control: without repair the crash does not come back intact.
    let mut control = c.copy_stopped();
    let outcome = recovers_intact(&mut control, &digest);
    control.stop();
    assert!(
        outcome.is_err(),
        "the torn pages did not matter without repair: the test cannot fail"
    );
    drop(control);

    // Bad input, refused before anything is written (exit 2).
    let wrong = d.join("wrong-token");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef\n").expect("write");
    // A token file others can read is refused, like the helper's own.
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let (code, _, err) = run_remote(
        &c.data,
        &url,
        &["--helper-token-file", wrong.to_str().expect("path")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("chmod 0600"), "{err}");
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let (code, _, err) = run_remote(
        &c.data,
        &url,
        &[
            "--helper-token-file",
            wrong.to_str().expect("path"),
            "--helper-ca-file",
            ca,
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("refused the token"), "{err}");
    assert!(
        !err.contains("0123456789abcdef"),
        "the token is never printed: {err}"
    );
    let nobody = format!("https://127.0.0.1:{}", free_port());
    let (code, _, err) = run_remote(&c.data, &nobody, &auth);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&nobody), "{err}");
    // Without the CA the helper's certificate is not trusted.
    let (code, _, err) = run_remote(&c.data, &url, &auth[..2]);
    assert_eq!(code, Some(2), "{err}");
    let mut other = PgCluster::start(&[], &[]);
    other.crash();
    let (code, _, err) = run_remote(&other.data, &url, &auth);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("different cluster"), "{err}");
    drop(other);

    let (code, stdout, stderr) = run_remote(&c.data, &url, &auth);
    assert_repaired(&mut c, &digest, code, &stdout, &stderr);
    // A clean shutdown needs nothing (and asks no helper).
    c.stop();
    let (code, out, _) = run_remote(&c.data, &nobody, &auth);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("clean shutdown"), "{out}");
    h.kill9();
}

/// Two helper shards over SeaweedFS; shard 1 stops receiving earlier than shard 0, so their
/// ends differ and the repair starts the tail at the smaller. Every shard must be named.
#[test]
fn remote_repair_from_two_shards() {
    let mut c = fpw_off_cluster("1");
    let sw = crate::seaweed::SeaweedFs::start();
    let tmp = TempDir::new("remote-repair-shards");
    let d = tmp.path();
    // One token for both shards (routing sends it to peers too).
    let token = d.join("api.token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef0123456789abcdef\n").expect("token");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let token_arg = ["--api-token-file", token.to_str().expect("path")];
    let mut s1 = crate::shards::spawn_shard(
        &c,
        &sw,
        1,
        &d.join("shard1"),
        &d.join("shard1.log"),
        &token_arg,
    );
    let mut s0 = crate::shards::spawn_shard(
        &c,
        &sw,
        0,
        &d.join("shard0"),
        &d.join("shard0.log"),
        &token_arg,
    );
    for h in [&mut s0, &mut s1] {
        h.wait_status("streaming", Duration::from_secs(120), |s| {
            s["state"] == "streaming"
        });
    }
    let urls = [0, 1].map(|i| format!("http://127.0.0.1:{}", [&s0, &s1][i].listen.port));
    let auth = ["--helper-token-file", token.to_str().expect("path")];
    checkpoint_and_work(&c);
    let flushed = support::lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    for h in [&mut s0, &mut s1] {
        h.wait_status("caught up", Duration::from_secs(60), |s| {
            support::status_lsn(s, "decoded_lsn") >= flushed
        });
    }
    signal(&s1, "-STOP");
    c.pgbench(&["-n", "-c", "2", "-t", "100"]);
    let flushed = support::lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    s0.wait_status("shard 0 ahead", Duration::from_secs(60), |s| {
        support::status_lsn(s, "decoded_lsn") >= flushed
    });
    signal(&s0, "-STOP");
    let digest = work_crash_and_tear(&mut c);
    signal(&s0, "-CONT");
    signal(&s1, "-CONT");

    // A missing shard is refused.
    let (code, _, err) = run_remote(&c.data, &urls[0], &auth);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no helper of shard 1 of 2"), "{err}");

    let (code, stdout, stderr) = run_remote(&c.data, &format!("{},{}", urls[1], urls[0]), &auth);
    assert!(stderr.contains("2 helper(s) answered"), "{stderr}");
    assert_repaired(&mut c, &digest, code, &stdout, &stderr);
    c.stop();
    s0.kill9();
    s1.kill9();
    drop(sw);
}
