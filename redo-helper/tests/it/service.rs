//! `redo-helper run` as a service (docs/operations.md): the systemd unit verifies; the
//! helper configured by a file and the environment tells a NOTIFY_SOCKET it is ready once
//! streaming (READY=1, STATUS=, WATCHDOG=1), SIGHUP applies a changed threshold, SIGTERM
//! under load exits 0 having acknowledged only what it keeps, and a restart resumes with no
//! gap; `repair --if-needed` as PostgreSQL's pre-start step works beside a running helper.

use crate::common::{self, PgCluster, TempDir};
use crate::repair::{run_repair, summary_num};
use crate::support::{self, HELPER_BIN, HelperProcess, free_port};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../packaging/redo-helper@.service"
);

/// `systemd-analyze verify` of the packaged unit (its ExecStart pointed at the binary under
/// test, which verify requires to exist): no error and no warning.
#[test]
fn systemd_unit_verifies() {
    let tmp = TempDir::new("unit");
    let text = std::fs::read_to_string(UNIT).expect("read the unit");
    assert!(text.contains("Type=notify") && text.contains("ExecStart=/usr/bin/redo-helper"));
    let unit = tmp.path().join("redo-helper@test.service");
    std::fs::write(&unit, text.replace("/usr/bin/redo-helper", HELPER_BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd; make setup installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warns:\n{stderr}"
    );
}

/// Spawns `redo-helper run --config FILE` with the listener from the environment, the
/// notification socket and watchdog set.
fn spawn_configured(config: &Path, data_dir: &Path, log: &Path, notify: &Path) -> HelperProcess {
    let listen = free_port();
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("helper log");
    let child = Command::new(HELPER_BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("REDO_HELPER_LISTEN", format!("127.0.0.1:{listen}"))
        .env("NOTIFY_SOCKET", notify)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .expect("spawn redo-helper");
    HelperProcess {
        child,
        listen: support::Api {
            port: listen,
            token_file: data_dir.join("api.token"),
            socket: data_dir.join("api.sock"),
        },
        log: log.to_path_buf(),
    }
}

/// Notifications received until `pred` holds on one of them (or panics after `timeout`).
fn receive_until(
    sock: &UnixDatagram,
    timeout: Duration,
    what: &str,
    seen: &mut Vec<String>,
    pred: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {what} within {timeout:?}; got {seen:?}"
        );
        sock.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            let hit = pred(&m);
            seen.push(m);
            if hit {
                return;
            }
        }
    }
}

fn signal(h: &HelperProcess, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    let rc = unsafe { libc::kill(h.child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({}, {sig})", h.child.id());
}

fn slot_restart_lsn(c: &PgCluster) -> u64 {
    support::lsn(
        &c.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'"),
    )
}

#[test]
fn notify_reload_and_sigterm_under_load_lose_nothing() {
    let c = PgCluster::start_fpw_off(&[]);
    c.pgbench(&["-i", "-s", "2", "-q"]);
    let tmp = TempDir::new("service");
    let helper_dir = tmp.path().join("helper");
    let config = tmp.path().join("main.toml");
    let write_config = |threshold: u32, level: &str| {
        std::fs::write(
            &config,
            format!(
                "connect = \"{}\"\ndata-dir = \"{}\"\nimage-threshold = {threshold}\nmax-backoff-secs = 2\nlog-level = \"{level}\"\n",
                c.conninfo(),
                helper_dir.display()
            ),
        )
        .unwrap();
    };
    write_config(16, "info");
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");
    let log = tmp.path().join("helper.log");
    let mut h = spawn_configured(&config, &helper_dir, &log, &notify_path);
    let mut seen = Vec::new();

    // READY=1 only once streaming: every STATUS= before it names another state.
    receive_until(
        &notify,
        Duration::from_secs(120),
        "READY=1",
        &mut seen,
        |m| m.lines().any(|l| l == "READY=1"),
    );
    let ready = seen.last().unwrap().clone();
    assert!(ready.contains("STATUS=streaming; lag "), "{ready}");
    assert!(
        seen[..seen.len() - 1]
            .iter()
            .all(|m| !m.contains("READY=1") && !m.contains("STATUS=streaming")),
        "{seen:?}"
    );
    receive_until(
        &notify,
        Duration::from_secs(5),
        "WATCHDOG=1",
        &mut seen,
        |m| m.lines().any(|l| l == "WATCHDOG=1"),
    );
    // No RUST_LOG: the service logs its start at info by default.
    let text = h.log_text();
    assert!(text.contains("streaming from"), "{text}");
    let s = h.status().expect("status");
    assert_eq!(s["image_threshold"], 16, "{s}");

    // SIGHUP: the file's new threshold and log level apply live.
    write_config(7, "debug");
    signal(&h, libc::SIGHUP);
    h.wait_status("threshold 7 after SIGHUP", Duration::from_secs(10), |s| {
        s["image_threshold"] == 7
    });
    let text = h.log_text();
    assert!(
        text.contains("image threshold 7, log level DEBUG"),
        "{text}"
    );

    // SIGTERM under load.
    let port = c.port;
    let root = c.root.clone();
    let load = std::thread::spawn(move || {
        common::pg_command("pgbench")
            .args(["-h"])
            .arg(&root)
            .args([
                "-p",
                &port.to_string(),
                "-n",
                "-c",
                "2",
                "-T",
                "8",
                "postgres",
            ])
            .output()
            .expect("pgbench")
    });
    std::thread::sleep(Duration::from_secs(3));
    let streamed = support::status_lsn(&h.status().expect("status"), "flush_lsn");
    signal(&h, libc::SIGTERM);
    let (code, text) = h.wait_exit_code(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("replication stopped"), "{text}");
    receive_until(
        &notify,
        Duration::from_secs(5),
        "STOPPING=1",
        &mut seen,
        |m| m.lines().any(|l| l == "STOPPING=1"),
    );
    // What the server was told is durable: the last acknowledgement.
    let acked = slot_restart_lsn(&c);
    assert!(
        acked >= streamed,
        "acknowledged {acked:X} < streamed {streamed:X}"
    );

    // Restart: it resumes at its archive's end, at or past everything acknowledged.
    let mut h = spawn_configured(&config, &helper_dir, &log, &notify_path);
    let resumed = h.wait_status("streaming after restart", Duration::from_secs(60), |s| {
        s["state"] == "streaming"
    });
    let text = h.log_text();
    let from = text
        .lines()
        .rev()
        .filter_map(|l| l.split("streaming from ").nth(1))
        .find_map(|r| r.split_whitespace().next())
        .map(support::lsn)
        .unwrap_or_else(|| panic!("no 'streaming from' in\n{text}"));
    assert!(
        from >= acked,
        "resumed at {from:X}, before the acknowledged {acked:X}"
    );
    assert!(support::status_lsn(&resumed, "flush_lsn") >= acked);
    let out = load.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `check` compares with the data files as of a checkpoint the helper has decoded.
    crate::redo_verify::checkpoint_and_catch_up(&c, &mut h);
    signal(&h, libc::SIGTERM);
    let (code, text) = h.wait_exit_code(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{text}");
    // Every page the helper has matches the cluster: no WAL missing in between.
    let sum = support::run_check_clean(&helper_dir, &c.data, 100);
    eprintln!("after SIGTERM and restart: {}", sum.line);
}

/// PostgreSQL's pre-start step beside a running helper: after a clean shutdown it does
/// nothing and leaves the helper alone; after a crash the helper hands its directory over,
/// the repair runs, and the same helper process follows the cluster on.
#[test]
fn repair_if_needed_beside_a_running_helper() {
    let mut c = PgCluster::start_fpw_off(&["-k"]);
    c.pgbench(&["-i", "-s", "2", "-q"]);
    let (_tmp, helper_dir, mut h) = crate::repair::stream_helper(&c, "prestart");
    let pid = h.child.id();

    c.stop();
    let (code, out, err) = run_repair(&helper_dir, &c.data, &["--if-needed"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("clean shutdown"), "{out}");
    assert!(!h.log_text().contains("handing"), "{}", h.log_text());
    c.try_start().expect("start after a clean shutdown");
    c.pgbench(&["-n", "-c", "2", "-t", "300"]);
    let target = support::lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    h.wait_status("caught up", Duration::from_secs(60), |s| {
        support::status_lsn(s, "decoded_lsn") >= target
    });

    // A crash with WAL the helper has not seen: it cannot stream while PostgreSQL is down.
    c.pgbench(&["-n", "-c", "2", "-t", "300"]);
    c.crash();
    // Without --if-needed the directory is in use.
    let (code, _, err) = run_repair(&helper_dir, &c.data, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("in use by another redo-helper"), "{err}");
    let (code, out, err) = run_repair(&helper_dir, &c.data, &["--if-needed"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let line = out.lines().last().unwrap_or_default();
    assert!(summary_num(line, " unrepairable") == 0, "{line}");
    let text = h.log_text();
    assert!(text.contains("handing the data directory over"), "{text}");
    c.try_start().expect("start after repair");
    c.pgbench(&["-n", "-c", "2", "-t", "100"]);
    let target = support::lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    h.wait_status(
        "streaming after the repair",
        Duration::from_secs(120),
        |s| s["state"] == "streaming" && support::status_lsn(s, "decoded_lsn") >= target,
    );
    assert_eq!(
        h.child.id(),
        pid,
        "the same process (re-executed) follows on"
    );
    assert!(h.child.try_wait().unwrap().is_none());
    let text = h.log_text();
    assert!(text.contains("waiting for redo-helper repair"), "{text}");
}
