//! Object-storage mode (`run --object-store`) against a real SeaweedFS S3 gateway (started by
//! `scripts/seaweedfs.sh` on free loopback ports, with credentials): the slot's restart_lsn
//! never passes the WAL the bucket holds (also while the object store is down), and a helper
//! started on an empty data directory resumes from the bucket — no BASE_BACKUP, no gap, no
//! duplicate, and `check` clean.

use crate::common::{PgCluster, TempDir};
use crate::seaweed::{BUCKET, SEG, SeaweedFs, bucket_wal, bucket_wal_end, list, wait_until};
use crate::support::{HelperProcess, lsn, status_lsn};
use std::path::Path;
use std::time::Duration;

fn restart_lsn(c: &PgCluster) -> u64 {
    lsn(&c.sql(
        "SELECT coalesce(restart_lsn, '0/0') FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'",
    ))
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
