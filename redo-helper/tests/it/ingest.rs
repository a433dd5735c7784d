//! Ingestion against real PostgreSQL 15 clusters: BASE_BACKUP bootstrap under load, the WAL
//! archive byte-for-byte equal to pg_wal and readable by pg_waldump, kill -9 at random
//! moments with no gap or duplicate, the slot never ahead of what the helper fsynced, SCRAM
//! and MD5 authentication, and each bad input as a clear error or a retry.

use crate::common::{PgCluster, TempDir, pg_waldump};
use crate::support::{HelperProcess, lsn, status_lsn};
use crate::{common, support};
use std::path::Path;
use std::time::{Duration, Instant};

const SEG: u64 = 16 << 20;

fn tcp_cluster(conf: &[&str]) -> PgCluster {
    let mut all = vec![
        "listen_addresses = '127.0.0.1'",
        "wal_level = replica",
        "max_wal_senders = 10",
        "autovacuum = off",
    ];
    all.extend_from_slice(conf);
    PgCluster::start(&[], &all)
}

/// Waits until the helper has fsynced everything the server has flushed.
fn wait_caught_up(c: &PgCluster, h: &mut HelperProcess) -> serde_json::Value {
    let target = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    h.wait_status("catch-up", Duration::from_secs(60), |s| {
        status_lsn(s, "flush_lsn") >= target && status_lsn(s, "decoded_lsn") >= target
    })
}

/// The archive holds exactly pg_wal's bytes over [from, to).
pub(crate) fn assert_archive_matches_pg_wal(c: &PgCluster, archive: &Path, from: u64, to: u64) {
    let mut pos = from;
    while pos < to {
        let segno = pos / SEG;
        let name = format!("{:08X}{:08X}{:08X}", 1, segno / 256, segno % 256);
        let end = to.min((segno + 1) * SEG);
        let (a, b) = (
            std::fs::read(archive.join(&name)).expect("archive segment"),
            std::fs::read(c.wal_dir().join(&name)).expect("pg_wal segment"),
        );
        let range = (pos % SEG) as usize..(end - segno * SEG) as usize;
        assert!(
            a[range.clone()] == b[range.clone()],
            "segment {name} differs from pg_wal in {range:?}"
        );
        pos = end;
    }
}

/// Records pg_waldump finds in [start, end) of `dir`.
fn waldump_count(dir: &Path, start: u64, end: u64) -> usize {
    let fmt = |l: u64| format!("{:X}/{:X}", l >> 32, l & 0xFFFF_FFFF);
    let (lines, stderr) = pg_waldump(dir, &["-s", &fmt(start), "-e", &fmt(end)]);
    assert!(
        !stderr.contains("error")
            || stderr.contains("invalid record length")
            || stderr.contains("end of WAL"),
        "pg_waldump: {stderr}"
    );
    lines.iter().filter(|l| l.starts_with("rmgr:")).count()
}

#[test]
fn bootstrap_under_load_then_archive_equals_pg_wal() {
    let c = tcp_cluster(&[]);
    c.pgbench(&["-i", "-s", "5", "-q"]);
    let dir = TempDir::new("ingest-boot");
    let mut h = HelperProcess::spawn(
        &c.conninfo(),
        &dir.path().join("helper"),
        &dir.path().join("helper.log"),
    );
    std::thread::scope(|s| {
        // Bootstrap while pgbench writes.
        s.spawn(|| c.pgbench(&["-n", "-T", "12", "-c", "2", "-j", "2"]));
        std::thread::sleep(Duration::from_millis(500));
        h.wait_status("streaming", Duration::from_secs(60), |s| {
            s["state"] == "streaming" && s["consistent"] == true
        });
    });
    let st = wait_caught_up(&c, &mut h);
    let start = status_lsn(&st, "backup_start_lsn");
    let flush = status_lsn(&st, "flush_lsn");
    let archive = dir.path().join("helper/wal");
    assert!(
        flush > start + SEG,
        "pgbench should have produced more than a segment of WAL"
    );
    assert_archive_matches_pg_wal(&c, &archive, start - start % SEG, flush);
    // pg_waldump reads the archive; the helper indexed exactly those records.
    let in_archive = waldump_count(&archive, start, flush);
    assert_eq!(in_archive, waldump_count(&c.wal_dir(), start, flush));
    assert_eq!(
        st["records_decoded"].as_u64().unwrap_or(0) as usize,
        in_archive,
        "helper's decoded record count vs pg_waldump"
    );
    assert!(st["pages_indexed"].as_u64().unwrap_or(0) > 100);
    // The slot never passes what the helper fsynced.
    let restart = lsn(
        &c.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'")
    );
    assert!(restart <= flush);
    let metrics = h.metrics().unwrap_or_default();
    assert!(
        metrics.contains("redo_helper_records_total ")
            && metrics.contains("redo_helper_lag_bytes "),
        "{metrics}"
    );
    // Base pages landed in the store.
    let db = c.sql("SELECT oid FROM pg_database WHERE datname = 'postgres'");
    let rel = c.sql("SELECT relfilenode FROM pg_class WHERE relname = 'pgbench_accounts'");
    let base = dir.path().join(format!("helper/base/1663/{db}/{rel}"));
    assert!(
        std::fs::metadata(&base).map(|m| m.len()).unwrap_or(0) >= 8192 * 100,
        "{base:?}"
    );
    reads_in_the_backup_window_are_proven_or_refused(&h, &archive, &st);
}

/// The base backup copied its files while pgbench wrote: a page's copy may hold any change of
/// the window [backup start, backup end). A read before the page's first change there would
/// start from that copy and is refused by name (410); at the change (a full-page image, as
/// PostgreSQL forces them during a backup) it is served.
fn reads_in_the_backup_window_are_proven_or_refused(
    h: &HelperProcess,
    archive: &Path,
    st: &serde_json::Value,
) {
    let show = |l: u64| format!("{:X}/{:08X}", l >> 32, l & 0xFFFF_FFFF);
    let (start, end) = (
        status_lsn(st, "backup_start_lsn"),
        status_lsn(st, "backup_end_lsn"),
    );
    let (lines, stderr) = pg_waldump(archive, &["-s", &show(start), "-e", &show(end)]);
    // The first full-page image of a main-fork page in the window after its first record
    // (a read just before that one would be before the helper's history), and its LSN.
    let first_image = lines.iter().find_map(|l| {
        let at = lsn(l.split(", lsn: ").nth(1)?.split(',').next()?);
        if at <= start {
            return None;
        }
        let blk = l
            .split("blkref #")
            .skip(1)
            .find(|b| b.ends_with("FPW") || b.contains("FPW,"))?;
        let mut words = blk.split_whitespace().skip(1);
        let (Some("rel"), Some(rel), Some("blk"), Some(block)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return None; // another fork ("fork fsm blk ...")
        };
        Some((at, rel.to_string(), block.trim_end_matches(',').to_string()))
    });
    let Some((at, rel, block)) = first_image else {
        panic!(
            "no full-page image in the backup window {} .. {}: pgbench wrote nothing while the copy ran? {stderr}\n{}",
            show(start),
            show(end),
            lines.join("\n")
        );
    };
    let path = format!("/page/{rel}/main/{block}?cache=none");
    let before = support::http(&h.listen, "GET", &format!("{path}&lsn={}", show(at - 1)))
        .expect("GET /page");
    let text = String::from_utf8_lossy(&before.body);
    assert_eq!(before.status, 410, "{path} before {}: {text}", show(at));
    assert!(
        text.contains("not provable") && text.contains(&show(at)),
        "{text}"
    );
    for lsn_at in [at, end] {
        let r = support::http(&h.listen, "GET", &format!("{path}&lsn={}", show(lsn_at)))
            .expect("GET /page");
        assert_eq!(
            r.status,
            200,
            "{path} at {}: {}",
            show(lsn_at),
            String::from_utf8_lossy(&r.body)
        );
    }
}

#[test]
fn kill_nine_ten_times_under_load_loses_nothing() {
    let c = tcp_cluster(&[]);
    c.pgbench(&["-i", "-s", "2", "-q"]);
    let dir = TempDir::new("ingest-kill");
    let data = dir.path().join("helper");
    let log = dir.path().join("helper.log");
    let mut h = HelperProcess::spawn(&c.conninfo(), &data, &log);
    h.wait_status("bootstrap", Duration::from_secs(60), |s| {
        s["state"] == "streaming"
    });
    let flushed_file = data.join("wal/flushed");
    std::thread::scope(|s| {
        s.spawn(|| c.pgbench(&["-n", "-T", "25", "-c", "2", "-j", "2"]));
        // Pseudo-random pauses (deterministic per run, different per moment).
        let mut seed = std::process::id() as u64 ^ 0x9E37_79B9_7F4A_7C15;
        for round in 0..10 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(300 + seed % 1200));
            h.kill9();
            // Invariant: the slot's restart_lsn is never past what the helper has fsynced.
            let flushed = lsn(&std::fs::read_to_string(&flushed_file).unwrap_or_default());
            let restart = lsn(&c.sql("SELECT coalesce(restart_lsn, '0/0') FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'"));
            assert!(
                restart <= flushed,
                "round {round}: slot restart_lsn {restart:X} is past the helper's fsynced {flushed:X}"
            );
            h = HelperProcess::spawn(&c.conninfo(), &data, &log);
        }
    });
    let st = wait_caught_up(&c, &mut h);
    let start = status_lsn(&st, "backup_start_lsn");
    let flush = status_lsn(&st, "flush_lsn");
    // A full rescan (the restarted helper rebuilt its index from the archive) matches pg_waldump
    // over pg_wal: no gap, no duplicate.
    assert_archive_matches_pg_wal(&c, &data.join("wal"), start - start % SEG, flush);
    assert_eq!(
        st["records_decoded"].as_u64().unwrap_or(0) as usize,
        waldump_count(&c.wal_dir(), start, flush)
    );
    assert!(
        h.log_text().matches("rebuilt page index").count() >= 1,
        "restarts rebuild the index from the archive"
    );
}

#[test]
fn scram_and_md5_authentication() {
    let c = tcp_cluster(&["password_encryption = 'scram-sha-256'"]);
    c.sql("CREATE ROLE rep_scram LOGIN REPLICATION PASSWORD 'sekret'");
    c.sql(
        "SET password_encryption = 'md5'; CREATE ROLE rep_md5 LOGIN REPLICATION PASSWORD 'md5pass'",
    );
    let hba = "local all all trust\nhost replication rep_scram 127.0.0.1/32 scram-sha-256\nhost replication rep_md5 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 scram-sha-256\n";
    std::fs::write(c.data.join("pg_hba.conf"), hba).expect("pg_hba");
    c.sql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(300));
    let dir = TempDir::new("ingest-auth");
    let ci = format!(
        "host=127.0.0.1 port={} user=rep_scram password=sekret",
        c.port
    );
    let mut h = HelperProcess::spawn(
        &ci,
        &dir.path().join("scram"),
        &dir.path().join("scram.log"),
    );
    h.wait_status("SCRAM bootstrap", Duration::from_secs(60), |s| {
        s["state"] == "streaming"
    });
    drop(h);
    let ci = format!("postgresql://rep_md5:md5pass@127.0.0.1:{}/", c.port);
    let mut h = HelperProcess::spawn(&ci, &dir.path().join("md5"), &dir.path().join("md5.log"));
    h.wait_status("MD5 bootstrap", Duration::from_secs(60), |s| {
        s["state"] == "streaming"
    });
    drop(h);
    // Wrong password: a clear error and a non-zero exit, no retry loop.
    let ci = format!(
        "host=127.0.0.1 port={} user=rep_scram password=wrong",
        c.port
    );
    let mut h = HelperProcess::spawn(&ci, &dir.path().join("bad"), &dir.path().join("bad.log"));
    let (ok, log) = h.wait_exit(Duration::from_secs(30));
    assert!(
        !ok && log.contains("password authentication failed"),
        "{log}"
    );
    // No password given where one is required.
    let ci = format!("host=127.0.0.1 port={} user=rep_scram", c.port);
    let mut h = HelperProcess::spawn(&ci, &dir.path().join("nopw"), &dir.path().join("nopw.log"));
    let (ok, log) = h.wait_exit(Duration::from_secs(30));
    assert!(!ok && log.contains("none was given"), "{log}");
}

#[test]
fn bad_inputs_are_clear_errors_or_retries() {
    let dir = TempDir::new("ingest-bad");
    // Unreachable server: retries with back-off, says why, does not exit.
    let port = support::free_port();
    let mut h = HelperProcess::spawn(
        &format!("host=127.0.0.1 port={port} user=postgres"),
        &dir.path().join("unreach"),
        &dir.path().join("unreach.log"),
    );
    h.wait_status("retrying", Duration::from_secs(20), |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect"))
    });
    assert!(
        h.child.try_wait().ok().flatten().is_none(),
        "must keep retrying"
    );
    drop(h);

    // Bad connection string: exit code 2 at once.
    let mut h = HelperProcess::spawn(
        "host=127.0.0.1 port=notaport",
        &dir.path().join("badci"),
        &dir.path().join("badci.log"),
    );
    let (ok, log) = h.wait_exit(Duration::from_secs(10));
    assert!(!ok && log.contains("invalid port"), "{log}");

    // wal_level = minimal: refused with the server's reason.
    let minimal = PgCluster::start(
        &[],
        &[
            "listen_addresses = '127.0.0.1'",
            "wal_level = minimal",
            "max_wal_senders = 0",
        ],
    );
    let mut h = HelperProcess::spawn(
        &minimal.conninfo(),
        &dir.path().join("minimal"),
        &dir.path().join("minimal.log"),
    );
    let (ok, log) = h.wait_exit(Duration::from_secs(30));
    assert!(
        !ok && (log.contains("wal_level") || log.contains("max_wal_senders")),
        "{log}"
    );
    drop(minimal);

    let c = tcp_cluster(&[]);
    // Missing REPLICATION privilege.
    c.sql("CREATE ROLE norep LOGIN");
    let mut h = HelperProcess::spawn(
        &format!("host=127.0.0.1 port={} user=norep", c.port),
        &dir.path().join("norep"),
        &dir.path().join("norep.log"),
    );
    let (ok, log) = h.wait_exit(Duration::from_secs(30));
    assert!(!ok && log.contains("replication"), "{log}");

    // A second helper on the same data directory.
    let data = dir.path().join("main");
    let mut h1 = HelperProcess::spawn(&c.conninfo(), &data, &dir.path().join("main.log"));
    h1.wait_status("streaming", Duration::from_secs(60), |s| {
        s["state"] == "streaming"
    });
    let mut h2 = HelperProcess::spawn(&c.conninfo(), &data, &dir.path().join("second.log"));
    let (ok, log) = h2.wait_exit(Duration::from_secs(10));
    assert!(
        !ok && log.contains("in use by another redo-helper"),
        "{log}"
    );

    // Slot held by another client: the helper says so and retries until it is free.
    h1.kill9();
    let recv = TempDir::new("ingest-recv");
    std::process::Command::new("chmod")
        .args(["777"])
        .arg(recv.path())
        .status()
        .ok();
    let mut receiver = std::process::Command::new(format!("{}/pg_receivewal", common::PGBIN))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &c.port.to_string(),
            "-U",
            "postgres",
            "--slot",
            "fpw_pushdown",
            "--no-loop",
            "-D",
        ])
        .arg(recv.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pg_receivewal");
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.sql("SELECT active FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'") != "t"
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut h1 = HelperProcess::spawn(&c.conninfo(), &data, &dir.path().join("main.log"));
    h1.wait_status("slot-busy error", Duration::from_secs(30), |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("is active for PID"))
    });
    let _ = receiver.kill();
    let _ = receiver.wait();
    h1.wait_status(
        "streaming after the slot is free",
        Duration::from_secs(30),
        |s| s["state"] == "streaming",
    );
    c.pgbench(&["-i", "-s", "1", "-q"]);
    wait_caught_up(&c, &mut h1);
    drop(h1);

    // A data directory bootstrapped from another cluster.
    let other = tcp_cluster(&[]);
    let mut h = HelperProcess::spawn(&other.conninfo(), &data, &dir.path().join("other.log"));
    let (ok, log) = h.wait_exit(Duration::from_secs(30));
    assert!(!ok && log.contains("different cluster"), "{log}");

    // Corrupt bytes in the archive: the restart refuses with the LSN, never guesses.
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("helper.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    let start = meta["backup_start_lsn"]
        .as_str()
        .unwrap_or("0/0")
        .to_string();
    let (records, _) = pg_waldump(&data.join("wal"), &["-s", &start]);
    let victim = &records[records.len() / 2];
    let target = lsn(victim
        .split("lsn: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or("0/0"))
        + 8;
    let seg_name = format!(
        "{:08X}{:08X}{:08X}",
        1,
        (target / SEG) / 256,
        (target / SEG) % 256
    );
    let seg_path = data.join("wal").join(seg_name);
    let mut bytes = std::fs::read(&seg_path).expect("segment");
    let off = (target % SEG) as usize;
    for b in &mut bytes[off..off + 8] {
        *b ^= 0x5A;
    }
    std::fs::write(&seg_path, bytes).expect("corrupt");
    let mut h = HelperProcess::spawn(&c.conninfo(), &data, &dir.path().join("corrupt.log"));
    let (ok, log) = h.wait_exit(Duration::from_secs(30));
    assert!(!ok && log.contains("WAL decoding failed at"), "{log}");
}

/// Bytes used by a directory tree.
fn du(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                du(&p)
            } else {
                std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

/// Unmounts on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(path.to_path_buf()))
    }

    fn resize(&self, bytes: u64) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.0)
            .status();
        assert!(ok.map(|s| s.success()).unwrap_or(false), "remount tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn disk_full_stops_acknowledging_and_resumes_when_space_returns() {
    let c = tcp_cluster(&[]);
    let dir = TempDir::new("ingest-full");
    let base_bytes = du(&c.data.join("base")) + du(&c.data.join("global"));
    let Some(fs) = Tmpfs::mount(&dir.path().join("mnt"), base_bytes + (20 << 20)) else {
        eprintln!("SKIPPED: cannot mount tmpfs here (needs root)");
        return;
    };
    let data = dir.path().join("mnt/helper");
    // No headroom for retention (there is none here): the disk fills for real (ENOSPC).
    let mut h = HelperProcess::spawn_with(
        &c.conninfo(),
        &data,
        &dir.path().join("helper.log"),
        &["--disk-reserve", "0"],
    );
    h.wait_status("bootstrap", Duration::from_secs(60), |s| {
        s["state"] == "streaming"
    });
    // ~40 MB of WAL into a disk with ~20 MB free.
    c.pgbench(&["-i", "-s", "3", "-q"]);
    let st = h.wait_status("disk full", Duration::from_secs(60), |s| {
        s["state"] == "disk_full"
            && s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("No space left"))
    });
    // Nothing past what is on disk is acknowledged.
    let flushed = lsn(&std::fs::read_to_string(data.join("wal/flushed")).unwrap_or_default());
    let restart = lsn(
        &c.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'")
    );
    assert!(restart <= flushed && status_lsn(&st, "flush_lsn") <= flushed);
    assert!(
        h.child.try_wait().ok().flatten().is_none(),
        "the helper waits for space instead of exiting"
    );
    // Space returns: it catches up by itself, and the archive is complete.
    fs.resize(512 << 20);
    let st = wait_caught_up(&c, &mut h);
    let start = status_lsn(&st, "backup_start_lsn");
    assert_archive_matches_pg_wal(
        &c,
        &data.join("wal"),
        start - start % SEG,
        status_lsn(&st, "flush_lsn"),
    );
    drop(h);
}
