//! Two helper shards (`run --shards 2 --shard I`) over one SeaweedFS bucket, following one
//! PostgreSQL 15 cluster under pgbench: each shard serves exactly the pages it owns (421 with
//! the owner for the others), every page of the changed relations is served by one of them
//! and equals the data files after CHECKPOINT (`check` per shard, masked), shard 1 started
//! beside shard 0 took no BASE_BACKUP of its own, and a replacement of shard 1 on an empty
//! data directory resumes from the bucket (PostgreSQL ran exactly one BASE_BACKUP in all),
//! losing nothing.

use crate::common::{PgCluster, TempDir};
use crate::seaweed::{BUCKET, SeaweedFs, list};
use crate::support::{HelperProcess, http, lsn, run_check_clean, status_lsn};
use std::path::Path;
use std::time::Duration;

/// Shard `shard` of two over `sw`'s bucket, following `c`, with `extra` flags.
pub(crate) fn spawn_shard(
    c: &PgCluster,
    sw: &SeaweedFs,
    shard: u32,
    data: &Path,
    log: &Path,
    extra: &[&str],
) -> HelperProcess {
    spawn_sharded(c, sw, 2, shard, data, log, extra)
}

fn spawn_sharded(
    c: &PgCluster,
    sw: &SeaweedFs,
    shards: u32,
    shard: u32,
    data: &Path,
    log: &Path,
    extra: &[&str],
) -> HelperProcess {
    let env = sw.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let shards_s = shards.to_string();
    let shard_s = shard.to_string();
    let slot = format!("fpw_pushdown_{shard}");
    let store = format!("s3://{BUCKET}/sharded");
    let mut args = vec![
        "--object-store",
        &store,
        "--object-store-interval-ms",
        "200",
        "--shards",
        &shards_s,
        "--shard",
        &shard_s,
        "--stripe-blocks",
        "8",
        "--slot",
        &slot,
        "--image-threshold",
        "16",
    ];
    args.extend_from_slice(extra);
    HelperProcess::spawn_with_env(&c.conninfo(), data, log, &args, &env)
}

/// CPU seconds the helper's image generation threads (`imagegen-N`) used so far.
fn imagegen_cpu_seconds(h: &HelperProcess) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", h.child.id())) else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("imagegen") {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: utime and stime are 14 and 15.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    ticks as f64 / 100.0
}

/// The object-store counters and images generated, from `/metrics`, for the bench numbers.
fn cost_lines(h: &HelperProcess) -> Vec<String> {
    h.metrics()
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.starts_with("redo_helper_object_store_requests_total")
                || l.starts_with("redo_helper_object_store_bytes_total")
                || l.starts_with("redo_helper_images_generated_total")
                || l.starts_with("redo_helper_wal_received_bytes_total")
        })
        .filter(|l| !l.ends_with(" 0"))
        .map(str::to_string)
        .collect()
}

fn base_backups_run(c: &PgCluster) -> usize {
    std::fs::read_to_string(c.root.join("log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("received replication command: BASE_BACKUP"))
        .count()
}

/// Waits until the helper decoded everything the server flushed (after a CHECKPOINT).
fn wait_decoded(h: &mut HelperProcess, target: u64) {
    h.wait_status("checkpoint decoded", Duration::from_secs(90), |s| {
        status_lsn(s, "decoded_lsn") >= target
    });
}

#[test]
fn two_shards_split_the_pages_and_a_replacement_resumes_from_the_bucket() {
    let c = PgCluster::start(
        &[],
        &[
            "listen_addresses = '127.0.0.1'",
            "wal_level = replica",
            "max_wal_senders = 10",
            "autovacuum = off",
            "log_replication_commands = on",
            "log_min_messages = log",
        ],
    );
    c.pgbench(&["-i", "-s", "1", "-q"]);
    let sw = SeaweedFs::start();
    let bucket = sw.client();
    let dir = TempDir::new("shards");
    let data = [dir.path().join("shard0"), dir.path().join("shard1")];
    // Shard 1 first: it creates its slot and waits for shard 0's bootstrap of the bucket.
    let mut s1 = spawn_shard(&c, &sw, 1, &data[1], &dir.path().join("shard1.log"), &[]);
    let mut s0 = spawn_shard(&c, &sw, 0, &data[0], &dir.path().join("shard0.log"), &[]);
    for h in [&mut s0, &mut s1] {
        let st = h.wait_status("streaming", Duration::from_secs(120), |s| {
            s["state"] == "streaming"
        });
        assert_eq!(st["shard"]["shards"], 2, "{st}");
    }
    assert!(s0.log_text().contains("bootstrapping from BASE_BACKUP"));
    // Shard 1 waits for shard 0's bootstrap of the bucket, or finds it done already when
    // its first look comes late (then it never logs that it waits): either way it resumes
    // from the bucket and runs no BASE_BACKUP of its own.
    let text1 = s1.log_text();
    assert!(!text1.contains("bootstrapping from BASE_BACKUP"), "{text1}");
    assert!(text1.contains("resumed from object store"), "{text1}");
    assert_eq!(base_backups_run(&c), 1, "one BASE_BACKUP, by shard 0");
    let slots =
        c.sql("SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots");
    assert_eq!(slots.trim(), "fpw_pushdown_0,fpw_pushdown_1");
    let keys: Vec<String> = list(&bucket, "sharded")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(keys.iter().any(|k| k == "sharded/shards.json"), "{keys:?}");

    c.pgbench(&["-n", "-T", "6", "-c", "2", "-j", "2"]);
    c.sql("CHECKPOINT");
    let target = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    wait_decoded(&mut s0, target);
    wait_decoded(&mut s1, target);

    // Every page of the changed relations: one shard serves it (x-fpw-shard), the other
    // answers 421 naming it.
    let mut split = [0u64; 2];
    for rel in [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
    ] {
        let path = c.sql(&format!("SELECT pg_relation_filepath('{rel}')"));
        let mut parts = path.trim().trim_start_matches("base/").split('/');
        let (db, relnode) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let blocks: u64 = c
            .sql(&format!("SELECT pg_relation_size('{rel}') / 8192"))
            .trim()
            .parse()
            .expect("relation size");
        assert!(blocks > 0, "{rel}");
        for blk in 0..blocks {
            let page = format!("/page/1663/{db}/{relnode}/main/{blk}");
            let r0 = http(&s0.listen, "GET", &page).expect("shard 0 answers");
            let r1 = http(&s1.listen, "GET", &page).expect("shard 1 answers");
            let (served, refused, owner) = match (r0.status, r1.status) {
                (200, 421) => (r0, r1, 0),
                (421, 200) => (r1, r0, 1),
                (a, b) => panic!("{rel} block {blk}: shard 0 answered {a}, shard 1 {b}"),
            };
            assert_eq!(
                served.header("x-fpw-shard"),
                Some(owner.to_string().as_str())
            );
            let body: serde_json::Value =
                serde_json::from_slice(&refused.body).expect("421 body is JSON");
            assert_eq!(body["owner"], owner, "{body}");
            split[owner as usize] += 1;
        }
    }
    println!(
        "pages of the pgbench relations: shard 0 {}, shard 1 {}",
        split[0], split[1]
    );
    assert!(split[0] > 0 && split[1] > 0, "{split:?}");
    // Each decoded every record and left the other shard's block references alone.
    for h in [&s0, &s1] {
        let st = h.status().expect("status");
        assert!(
            st["block_refs_other_shards"].as_u64().unwrap_or(0) > 0,
            "{st}"
        );
        assert!(st["block_refs_indexed"].as_u64().unwrap_or(0) > 0, "{st}");
    }
    for (i, h) in [&s0, &s1].into_iter().enumerate() {
        println!(
            "shard {i}: image generation {:.2} CPU-s; {}",
            imagegen_cpu_seconds(h),
            cost_lines(h).join("; ")
        );
    }

    // Shard 1's host is lost under load: a replacement on an empty data directory.
    std::thread::scope(|s| {
        let load = s.spawn(|| c.pgbench(&["-n", "-T", "4", "-c", "2", "-j", "2"]));
        std::thread::sleep(Duration::from_secs(2));
        s1.kill9();
        let _ = load.join();
    });
    std::fs::remove_dir_all(&data[1]).expect("remove shard 1's data directory");
    let mut s1 = spawn_shard(&c, &sw, 1, &data[1], &dir.path().join("shard1b.log"), &[]);
    c.pgbench(&["-n", "-T", "3", "-c", "2", "-j", "2"]);
    c.sql("CHECKPOINT");
    let target = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    wait_decoded(&mut s0, target);
    wait_decoded(&mut s1, target);
    let text = s1.log_text();
    assert!(text.contains("resumed from object store"), "{text}");
    assert!(!text.contains("bootstrapping from BASE_BACKUP"), "{text}");
    assert_eq!(base_backups_run(&c), 1, "no BASE_BACKUP after the first");
    assert!(
        list(&bucket, "sharded/shards/1")
            .iter()
            .all(|(k, _)| !k.contains("/wal/")),
        "only shard 0 writes WAL"
    );

    // Another split of the same bucket is refused by name.
    let mut other = spawn_sharded(
        &c,
        &sw,
        3,
        0,
        &dir.path().join("other"),
        &dir.path().join("other.log"),
        &[],
    );
    let (code, text) = other.wait_exit_code(Duration::from_secs(60));
    assert!(code.is_some_and(|c| c != 0), "{text}");
    assert!(text.contains("changing the number of shards"), "{text}");

    // Nothing lost: each shard's pages equal the data files (masked), and together they
    // cover the cluster's pages.
    s0.kill9();
    s1.kill9();
    let c0 = run_check_clean(&data[0], &c.data, 100);
    let c1 = run_check_clean(&data[1], &c.data, 100);
    println!(
        "check: shard 0 compared {}, shard 1 compared {}",
        c0.num(" pages compared"),
        c1.num(" pages compared")
    );
}
