//! `run --object-store ... --cache-size`: the data directory as a bounded cache of the bucket
//! (SeaweedFS of `object_store.rs`). Under pgbench with a cache far smaller than the data,
//! the local files the bucket holds stay within the bound, evicted base, image and WAL files
//! leave stubs and are read back by ranged GETs, pages read at the current and at historical
//! LSNs equal the data files / the full-chain replay (`check`), and a cold read while the
//! bucket is down is an error naming the evicted file, never a page.

use crate::common::{PgCluster, TempDir};
use crate::seaweed::{BUCKET, SEG, SeaweedFs, wait_until};
use crate::support::{HELPER_BIN, HelperProcess, http, lsn, status_lsn};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LIMIT: u64 = 2 << 20;
/// Entries per image file in the test (small files, so several are evicted).
const IMAGE_ENTRIES: u64 = 256;
const IMAGE_FILE: u64 = IMAGE_ENTRIES * (36 + 8192);

/// Local bytes of (base files, image files, WAL segments) and the number of stubs of each.
fn local_bytes(data: &Path) -> ([u64; 3], [u64; 3]) {
    let mut bytes = [0u64; 3];
    let mut stubs = [0u64; 3];
    let mut stack = vec![data.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
                continue;
            }
            let rel = e.path().strip_prefix(data).unwrap().to_path_buf();
            let name = rel.to_string_lossy().into_owned();
            let kind = if name.starts_with("base/") {
                0
            } else if name.starts_with("images/") {
                1
            } else if name.starts_with("wal/") && name.len() >= 28 {
                2
            } else {
                continue;
            };
            if name.ends_with(".evicted") {
                stubs[kind] += 1;
            } else {
                bytes[kind] += md.len();
            }
        }
    }
    (bytes, stubs)
}

fn metric(h: &HelperProcess, name: &str) -> f64 {
    let text = h.metrics().unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
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
            &format!("s3://{BUCKET}/cached"),
            "--object-store-interval-ms",
            "200",
            "--cache-size",
            "2MB",
            "--image-threshold",
            "16",
            "--image-file-entries",
            &IMAGE_ENTRIES.to_string(),
        ],
        &env,
    )
}

#[test]
fn cache_size_bounds_the_data_directory_and_reads_evicted_files_back() {
    // Refused without an object store: only what the bucket holds can be evicted.
    let out = Command::new(HELPER_BIN)
        .args([
            "run",
            "--connect",
            "host=/nonexistent",
            "--data-dir",
            "/nonexistent",
        ])
        .args(["--cache-size", "1GB"])
        .output()
        .expect("redo-helper run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cache-size needs --object-store"));

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
    let dir = TempDir::new("cache");
    let data = dir.path().join("helper");
    let log = dir.path().join("helper.log");
    let mut h = spawn_helper(&c, &sw, &data, &log);
    h.wait_status("bootstrap", Duration::from_secs(90), |s| {
        s["state"] == "streaming"
    });
    // The base backup alone is many times the cache.
    wait_until("base files evicted", Duration::from_secs(30), || {
        local_bytes(&data).0[0] <= LIMIT
    });
    let (_, stubs) = local_bytes(&data);
    assert!(stubs[0] > 100, "base stubs: {stubs:?}");

    // Under load: the evictable bytes stay within the bound (checked by each 1 s pass); the
    // rest of the data directory is what the bucket does not hold yet or ingest needs.
    let mut worst = 0u64;
    std::thread::scope(|s| {
        let load = s.spawn(|| c.pgbench(&["-n", "-T", "12", "-c", "2", "-j", "2"]));
        while !load.is_finished() {
            let (b, _) = local_bytes(&data);
            worst = worst.max(b.iter().sum());
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    println!("data directory during the load: at most {} MB", worst >> 20);
    // More WAL, so that segments fall behind the newest ones kept (and a relation whose
    // pages come from WAL only).
    c.sql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 400) AS t FROM generate_series(1, 60000) g",
    );
    c.sql("CHECKPOINT");
    let target = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    h.wait_status("checkpoint decoded", Duration::from_secs(90), |s| {
        status_lsn(s, "decoded_lsn") >= target
    });
    // Images are uploaded every 30 s: then whole image files are evicted too. Tolerance:
    // the bound, the WAL segments kept (the newest two complete ones, the one being written
    // and one not uploaded yet) and the image file being appended to.
    let tolerance = 4 * SEG + IMAGE_FILE;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (b, stubs) = local_bytes(&data);
        if stubs[1] > 0 && stubs[2] > 0 && b.iter().sum::<u64>() <= LIMIT + tolerance {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the data directory did not come within the bound with image files and WAL evicted: local bytes (base, images, WAL) {b:?}, stubs {stubs:?}, cache metrics:\n{}\n{}",
            h.metrics()
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("redo_helper_cache")
                    || l.starts_with("redo_helper_object_store_wal"))
                .collect::<Vec<_>>()
                .join("\n"),
            h.log_text()
                .lines()
                .filter(|l| l.contains("cache") || l.contains("WARN") || l.contains("ERROR"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (bytes, stubs) = local_bytes(&data);
    println!("local bytes (base, images, WAL): {bytes:?}; stubs: {stubs:?}");
    // (Set after each pass; a file that became evictable since waits for the next one.)
    wait_until(
        "the cache metric within the bound",
        Duration::from_secs(10),
        || metric(&h, "redo_helper_cache_bytes") <= LIMIT as f64,
    );
    assert!(metric(&h, "redo_helper_cache_evictions_total") > 100.0);

    // A cold read of a catalog page the backup holds and nothing changed since: its base
    // file was evicted, so it comes from the bucket. With the bucket down it is an error
    // that names the evicted file, not a page.
    let rel = ["pg_description", "pg_proc", "pg_attribute", "pg_depend"]
        .iter()
        .map(|r| c.rel_path(r))
        .find(|p| data.join("base").join(format!("{p}.evicted")).exists())
        .expect("an evicted catalog file");
    sw.kill();
    let down = http(&h.listen, "GET", &format!("/page/{rel}/main/1")).expect("GET /page");
    let body = String::from_utf8_lossy(&down.body);
    assert!(down.status >= 500, "{} {body}", down.status);
    assert!(body.contains("evicted") && body.contains(&rel), "{body}");
    sw.launch();
    let fetches = metric(&h, "redo_helper_cache_fetches_total");
    // (A restarted SeaweedFS can answer 500 for a moment before its volume is back.)
    let mut up = http(&h.listen, "GET", &format!("/page/{rel}/main/1")).expect("GET /page");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while up.status != 200 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        up = http(&h.listen, "GET", &format!("/page/{rel}/main/1")).expect("GET /page");
    }
    assert_eq!(up.status, 200, "{}", String::from_utf8_lossy(&up.body));
    assert_eq!(up.body.len(), 8192);
    assert!(metric(&h, "redo_helper_cache_fetches_total") > fetches);
    // The cost of a cold read: GetPage of evicted base pages (the page cache bypassed).
    let mut cold: Vec<Duration> = (0..20)
        .map(|b| {
            let t = std::time::Instant::now();
            let r = http(
                &h.listen,
                "GET",
                &format!("/page/{rel}/main/{b}?cache=none"),
            )
            .expect("GET /page");
            assert!(r.status == 200 || r.status == 404, "{}", r.status);
            t.elapsed()
        })
        .collect();
    cold.sort();
    println!(
        "cold GetPage of evicted base pages: p50 {:?}, max {:?}",
        cold[cold.len() / 2],
        cold[cold.len() - 1]
    );
    let text = h.metrics().unwrap_or_default();
    for l in text.lines().filter(|l| l.starts_with("redo_helper_cache_")) {
        println!("{l}");
    }
    h.kill9();

    // Every page the helper serves equals the data files after the checkpoint, and random
    // historical reads equal the full-chain replay: read through the bucket where evicted
    // (the base files, image files and WAL segments the stubs stand for).
    let env = sw.env();
    let out = Command::new(HELPER_BIN)
        .args(["check", "--data-dir"])
        .arg(&data)
        .arg("--pgdata")
        .arg(&c.data)
        .args(["--samples", "300"])
        .args(["--object-store", &format!("s3://{BUCKET}/cached")])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("redo-helper check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "check failed:\n{stdout}");
    let check = crate::support::CheckSummary {
        line: stdout.lines().last().unwrap_or_default().to_string(),
    };
    assert!(check.num(" pages compared") > 1000, "{}", check.line);
    assert_eq!(check.num(" mismatches,"), 0, "{}", check.line);
    assert_eq!(check.num(" unreadable"), 0, "{}", check.line);
    assert_eq!(check.num(" errors"), 0, "{}", check.line);

    // The disk is lost: a helper with a cache resumes from the bucket without downloading
    // the base files (they get stubs) and serves their pages from the bucket.
    std::fs::remove_dir_all(&data).expect("remove the data directory");
    let log2 = dir.path().join("helper2.log");
    let mut h = spawn_helper(&c, &sw, &data, &log2);
    h.wait_status("resume", Duration::from_secs(120), |s| {
        s["state"] == "streaming"
    });
    let text = h.log_text();
    assert!(text.contains("restored from object store"), "{text}");
    assert!(!text.contains("bootstrapping from BASE_BACKUP"), "{text}");
    let (bytes, stubs) = local_bytes(&data);
    assert!(bytes[0] <= LIMIT && stubs[0] > 100, "{bytes:?} {stubs:?}");
    let r = http(&h.listen, "GET", &format!("/page/{rel}/main/1")).expect("GET /page");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, up.body, "the same page before and after the resume");
}
