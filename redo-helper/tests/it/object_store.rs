//! Object-storage mode (`run --object-store`) against a real SeaweedFS S3 gateway (started by
//! `scripts/seaweedfs.sh` on free loopback ports, with credentials): the slot's restart_lsn
//! never passes the WAL the bucket holds (also while the object store is down), and a helper
//! started on an empty data directory resumes from the bucket — no BASE_BACKUP, no gap, no
//! duplicate, and `check` clean.

use crate::common::{PgCluster, TempDir};
use crate::support::{HelperProcess, lsn, status_lsn};
use object_store::ObjectStore;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const SEG: u64 = 16 << 20;
pub(crate) const KEY_ID: &str = "fpw-test-key";
pub(crate) const SECRET: &str = "fpw-test-secret-5f0c2a";
pub(crate) const BUCKET: &str = "fpw";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/seaweedfs.sh")
}

/// A SeaweedFS server (master, volume, filer, S3) of its own; killed on drop.
pub(crate) struct SeaweedFs {
    dir: TempDir,
    port: u16,
}

/// A port P with P..P+7 free (S3, master, volume, filer and their gRPC ports).
fn free_port_range() -> u16 {
    for _ in 0..100 {
        let p = crate::common::free_port();
        if p > 65000 {
            continue;
        }
        if (1..8).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
    panic!("no 8 consecutive free ports");
}

impl SeaweedFs {
    pub(crate) fn start() -> SeaweedFs {
        let dir = TempDir::new("seaweedfs");
        let port = free_port_range();
        let s = SeaweedFs { dir, port };
        s.launch();
        s
    }

    pub(crate) fn launch(&self) {
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .arg(BUCKET)
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .output()
            .expect("seaweedfs.sh");
        assert!(
            out.status.success(),
            "seaweedfs.sh start failed (scripts/setup.sh installs weed): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL: an outage.
    pub(crate) fn kill(&self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("kill")
            .arg(self.dir.path())
            .status();
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// The test's own client (not the helper's code) for looking into the bucket.
    pub(crate) fn client(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            object_store::aws::AmazonS3Builder::new()
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_bucket_name(BUCKET)
                .with_region("us-east-1")
                .with_access_key_id(KEY_ID)
                .with_secret_access_key(SECRET)
                .build()
                .expect("S3 client"),
        )
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every object under `prefix`: (key, size).
pub(crate) fn list(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<(String, u64)> {
    use futures_util::StreamExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = Arc::clone(store);
    let prefix = object_store::path::Path::from(prefix);
    rt.block_on(async move {
        let mut out = Vec::new();
        let mut s = store.list(Some(&prefix));
        while let Some(m) = s.next().await {
            let m = m.expect("list");
            out.push((m.location.to_string(), m.size));
        }
        out
    })
}

/// End of the contiguous WAL under `prefix/wal/` from its first segment, read directly from
/// the bucket: whole segments, then the pieces (`.partial/OFFSET`) of the next one.
fn bucket_wal_end(store: &Arc<dyn ObjectStore>, prefix: &str) -> u64 {
    bucket_wal(store, prefix).1
}

/// (first segment number, end of the contiguous WAL) of the bucket.
fn bucket_wal(store: &Arc<dyn ObjectStore>, prefix: &str) -> (u64, u64) {
    let mut whole = std::collections::BTreeSet::new();
    let mut pieces: std::collections::BTreeMap<u64, Vec<(u64, u64)>> = Default::default();
    for (key, size) in list(store, &format!("{prefix}/wal")) {
        let name = key.rsplit_once("/wal/").map(|(_, n)| n).unwrap_or(&key);
        let (seg, piece) = match name.split_once(".partial/") {
            Some((s, p)) => (s, Some(p)),
            None => (name, None),
        };
        let segno = u64::from_str_radix(&seg[8..16], 16).unwrap() * 256
            + u64::from_str_radix(&seg[16..24], 16).unwrap();
        match piece {
            None => {
                assert_eq!(size, SEG, "{key}");
                whole.insert(segno);
            }
            Some(p) => pieces
                .entry(segno)
                .or_default()
                .push((u64::from_str_radix(p, 16).unwrap(), size)),
        }
    }
    let Some(first) = whole.iter().chain(pieces.keys()).min().copied() else {
        return (0, 0);
    };
    let mut segno = first;
    while whole.contains(&segno) {
        segno += 1;
    }
    let mut off = 0;
    let mut v = pieces.remove(&segno).unwrap_or_default();
    v.sort_unstable();
    for (o, size) in v {
        if o > off {
            break;
        }
        off = off.max(o + size);
    }
    (first, segno * SEG + off)
}

fn restart_lsn(c: &PgCluster) -> u64 {
    lsn(&c.sql(
        "SELECT coalesce(restart_lsn, '0/0') FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'",
    ))
}

pub(crate) fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn spawn_helper(c: &PgCluster, sw: &SeaweedFs, data: &Path, log: &Path) -> HelperProcess {
    let env = sw.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    HelperProcess::spawn_with_env(
        &c.conninfo(),
        data,
        log,
        &[
            "--object-store",
            &format!("s3://{BUCKET}/cluster1"),
            "--object-store-interval-ms",
            "200",
            // Retention too, with small image files: objects are deleted as files are.
            "--retain",
            "32MB",
            "--retention-interval-ms",
            "500",
            "--image-threshold",
            "16",
            "--image-file-entries",
            "256",
        ],
        &env,
    )
}

#[test]
fn bucket_bounds_the_slot_and_an_empty_data_directory_resumes_from_it() {
    let c = PgCluster::start(
        &[],
        &[
            "listen_addresses = '127.0.0.1'",
            "wal_level = replica",
            "max_wal_senders = 10",
            "autovacuum = off",
        ],
    );
    c.pgbench(&["-i", "-s", "2", "-q"]);
    let sw = SeaweedFs::start();
    let bucket = sw.client();
    let dir = TempDir::new("object-store");
    let data = dir.path().join("helper");
    let log = dir.path().join("helper.log");
    let mut h = spawn_helper(&c, &sw, &data, &log);
    let st = h.wait_status("bootstrap", Duration::from_secs(90), |s| {
        s["state"] == "streaming"
    });
    assert!(h.log_text().contains("bootstrapping from BASE_BACKUP"));
    // Where the slot stood before the helper acknowledged anything (it was created, WAL
    // reserved, before the backup started): the archive's start needs nothing from the bucket.
    let backup_start = status_lsn(&st, "backup_start_lsn");
    let archive_start = backup_start - backup_start % SEG;
    let base_objects = list(&bucket, "cluster1/base").len();
    assert!(
        base_objects > 100,
        "base files in the bucket: {base_objects}"
    );

    // Under load, the slot never passes what the bucket holds.
    std::thread::scope(|s| {
        let load = s.spawn(|| c.pgbench(&["-n", "-T", "10", "-c", "2", "-j", "2"]));
        while !load.is_finished() {
            let restart = restart_lsn(&c);
            let in_bucket = bucket_wal_end(&bucket, "cluster1").max(archive_start);
            assert!(
                restart <= in_bucket,
                "slot restart_lsn {restart:X} is past the bucket's WAL end {in_bucket:X}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let target = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    wait_until(
        "acknowledgement of the load",
        Duration::from_secs(60),
        || restart_lsn(&c) >= target,
    );
    assert!(bucket_wal_end(&bucket, "cluster1") >= target);
    // Retention removes WAL from the bucket as from the disk, after the images and state a
    // resume needs are there.
    c.sql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 400) AS t FROM generate_series(1, 120000) g",
    );
    let st = h.wait_status("a retention pass", Duration::from_secs(90), |s| {
        s["retention"]["passes"].as_u64().unwrap_or(0) > 0
            && s["retention"]["segments_removed_total"]
                .as_u64()
                .unwrap_or(0)
                > 0
    });
    let horizon = lsn(st["retention"]["horizon_lsn"].as_str().unwrap_or("0/0"));
    wait_until(
        "WAL objects below the horizon deleted",
        Duration::from_secs(30),
        || bucket_wal(&bucket, "cluster1").0 >= horizon / SEG,
    );
    assert!(
        list(&bucket, "cluster1")
            .iter()
            .any(|(k, _)| k == "cluster1/retention.json")
    );
    assert!(!list(&bucket, "cluster1/images").is_empty());
    let metrics = h.metrics().unwrap_or_default();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("redo_helper_object_store_requests_total{op=\"put\",kind=\"wal\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );

    // The object store goes down: the helper keeps receiving and fsyncing, but its
    // acknowledgements stop at what the bucket had.
    sw.kill();
    // (An acknowledgement of the last upload may still be on its way.)
    std::thread::sleep(Duration::from_secs(1));
    let before_outage = restart_lsn(&c);
    c.pgbench(&["-n", "-T", "4", "-c", "2", "-j", "2"]);
    let server_flush = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    h.wait_status(
        "local flush during the outage",
        Duration::from_secs(30),
        |s| status_lsn(s, "flush_lsn") >= server_flush,
    );
    std::thread::sleep(Duration::from_secs(2));
    let during_outage = restart_lsn(&c);
    assert!(
        server_flush > before_outage + (1 << 20),
        "the load wrote WAL during the outage"
    );
    assert_eq!(
        during_outage, before_outage,
        "acknowledged {during_outage:X} while the bucket was down (before: {before_outage:X})"
    );
    // It comes back: acknowledgements resume.
    sw.launch();
    wait_until(
        "acknowledgements after the outage",
        Duration::from_secs(90),
        || restart_lsn(&c) >= server_flush,
    );

    // The helper's disk is lost under load.
    std::thread::scope(|s| {
        let load = s.spawn(|| c.pgbench(&["-n", "-T", "4", "-c", "2", "-j", "2"]));
        std::thread::sleep(Duration::from_secs(2));
        // The cost of the first helper's run (for bench/): WAL received and S3 traffic.
        for l in h.metrics().unwrap_or_default().lines() {
            if l.starts_with("redo_helper_object_store_")
                || l.starts_with("redo_helper_wal_received")
            {
                println!("{l}");
            }
        }
        h.kill9();
        let _ = load.join();
    });
    let slot_at_kill = restart_lsn(&c);
    std::fs::remove_dir_all(&data).expect("remove the data directory");
    let log2 = dir.path().join("helper2.log");
    let mut h = spawn_helper(&c, &sw, &data, &log2);
    c.pgbench(&["-n", "-T", "3", "-c", "2", "-j", "2"]);
    let target = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    let st = h.wait_status("catch-up after the resume", Duration::from_secs(90), |s| {
        status_lsn(s, "flush_lsn") >= target && status_lsn(s, "decoded_lsn") >= target
    });
    let text = h.log_text();
    assert!(text.contains("restored from object store"), "{text}");
    assert!(
        !text.contains("bootstrapping from BASE_BACKUP"),
        "a new BASE_BACKUP ran:\n{text}"
    );
    // No gap, no duplicate: the archive equals pg_wal from where the slot stood when the
    // old helper died (bucket below it, stream above) to the end.
    let start = status_lsn(&st, "backup_start_lsn");
    crate::ingest::assert_archive_matches_pg_wal(
        &c,
        &data.join("wal"),
        slot_at_kill.max(start) - slot_at_kill.max(start) % SEG,
        status_lsn(&st, "flush_lsn"),
    );
    // The pages it serves equal the data files after a checkpoint.
    c.sql("CHECKPOINT");
    let target = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    h.wait_status("checkpoint decoded", Duration::from_secs(60), |s| {
        status_lsn(s, "decoded_lsn") >= target
    });
    h.kill9();
    let check = crate::support::run_check(&data, &c.data, 100);
    assert!(check.num(" pages compared") > 100, "{}", check.line);
    assert_eq!(check.num(" mismatches,"), 0, "{}", check.line);
    assert_eq!(check.num(" unreadable"), 0, "{}", check.line);
    // S3 requests and bytes of the second helper's run (restore, then streaming).
    println!(
        "{}",
        text.lines()
            .find(|l| l.contains("restored from object store"))
            .unwrap_or("")
    );
}
