//! History retention (`redo-helper run --retain`) against a real PostgreSQL 15 cluster with
//! full_page_writes off: once the horizon passes them, archive segments are deleted and reads
//! before it are refused (410) while current reads go on; after `kill -9` and a restart, the
//! store (retained images, pruned index, saved relation events and unreadable markers) still
//! serves every page exactly as the cluster has it, including a table dropped, one
//! truncated by VACUUM and one rewritten by TRUNCATE before the horizon.

use crate::common::{PgCluster, TempDir};
use crate::redo_verify::unreplayed_index_am;
use crate::support::{HelperProcess, http, lsn, run_check, status_lsn};
use std::time::Duration;

const SEG: u64 = 16 << 20;

fn status_code(h: &HelperProcess, path: &str) -> (u16, String) {
    let r = http(&h.listen, "GET", path).expect("GET /page");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

fn segments_on_disk(dir: &std::path::Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir.join("wal"))
        .expect("wal dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| {
                // 16 MB segments: 256 per xlog id.
                u64::from_str_radix(&name[8..16], 16).unwrap_or(0) * 256
                    + u64::from_str_radix(&name[16..24], 16).unwrap_or(0)
            })
        })
        .collect();
    v.sort_unstable();
    v
}

fn retention_args() -> [&'static str; 8] {
    [
        "--retain",
        "32MB",
        "--image-threshold",
        "16",
        "--retention-interval-ms",
        "300",
        "--image-file-entries",
        "256",
    ]
}

#[test]
fn history_before_the_horizon_is_removed_and_what_remains_is_exact() {
    let c = PgCluster::start_fpw_off(&[]);
    c.pgbench(&["-i", "-s", "2", "-q"]);
    // In the base backup: a table to drop, one to TRUNCATE (new relfilenode, old one dropped)
    // and one VACUUM truncates (smgr truncation).
    c.sql(
        "CREATE TABLE gone_base (a int); INSERT INTO gone_base SELECT generate_series(1, 5000);
         CREATE TABLE cut_base (a int); INSERT INTO cut_base SELECT generate_series(1, 5000);
         CREATE TABLE shrink (a int, b text);
         INSERT INTO shrink SELECT g, repeat('s', 100) FROM generate_series(1, 20000) g;",
    );
    let tmp = TempDir::new("retention");
    let dir = tmp.path().join("helper");
    let log = tmp.path().join("helper.log");
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &retention_args());
    h.wait_status("streaming", Duration::from_secs(120), |s| {
        s["state"] == "streaming"
    });
    let st = h.status().expect("status");
    assert_eq!(st["retention"]["retain"], "32MB", "{st}");
    let backup_start = status_lsn(&st, "backup_start_lsn");

    // Early history, all of it soon behind the horizon; with it, an index whose access
    // method the redo does not replay, while there is one.
    c.sql("CREATE TABLE gone_new (a int); INSERT INTO gone_new SELECT generate_series(1, 3000);");
    let unreplayed = unreplayed_index_am();
    if let Some(am) = &unreplayed {
        c.sql(&format!(
            "CREATE TABLE unreplayed (p point); CREATE INDEX unreplayed_p ON unreplayed \
             USING {} (p); INSERT INTO unreplayed SELECT point(g % 61, g / 61) \
             FROM generate_series(1, 2000) g;",
            am.using
        ));
    }
    c.sql("UPDATE shrink SET b = 'updated' WHERE a % 10 = 0");
    c.sql("DROP TABLE gone_base");
    c.sql("DROP TABLE gone_new");
    c.sql("TRUNCATE cut_base");
    c.sql("INSERT INTO cut_base SELECT generate_series(1, 10)");
    c.sql("DELETE FROM shrink WHERE a > 2000");
    c.sql("VACUUM shrink");
    c.pgbench(&["-c", "2", "-T", "3", "-n"]);
    let branches = format!("/page/{}/main/0", c.rel_path("pgbench_branches"));
    let accounts = format!("/page/{}/main/7", c.rel_path("pgbench_accounts"));
    let unreplayed_page = unreplayed.as_ref().map(|am| {
        format!(
            "/page/{}/main/{}",
            c.rel_path("unreplayed_p"),
            am.changed_block
        )
    });
    let early = c.sql("SELECT pg_current_wal_flush_lsn()");
    let early_lsn = lsn(&early);
    h.wait_status("early catch-up", Duration::from_secs(60), |s| {
        status_lsn(s, "decoded_lsn") >= early_lsn
    });
    let (code, body) = status_code(&h, &format!("{branches}?lsn={early}"));
    assert_eq!(code, 200, "before the horizon moves: {body}");
    if let Some(page) = &unreplayed_page {
        let (code, body) = status_code(&h, page);
        assert_eq!(code, 409, "the index's pages are not replayed: {body}");
    }

    // > 100 MB of WAL: pgbench between segment switches.
    for _ in 0..8 {
        c.pgbench(&["-c", "2", "-T", "1", "-n"]);
        c.sql("SELECT pg_switch_wal()");
    }
    c.pgbench(&["-c", "2", "-T", "2", "-n"]);
    let now = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    assert!(now - backup_start > 100 << 20, "not enough WAL generated");
    let st = h.wait_status("retention pass", Duration::from_secs(180), |s| {
        let r = &s["retention"];
        status_lsn(s, "decoded_lsn") >= now
            && r["segments_removed_total"].as_u64().unwrap_or(0) > 0
            && r["horizon_lsn"].as_str().map(lsn).unwrap_or(0) + (32 << 20) + SEG > now
    });
    let r = &st["retention"];
    println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
    let horizon = r["horizon_lsn"].as_str().map(lsn).unwrap_or(0);
    assert_eq!(horizon % SEG, 0, "the horizon is a segment start: {r}");
    assert!(horizon > early_lsn, "{r}");
    assert!(now - horizon >= 32 << 20, "32 MB are kept: {r}");
    assert!(
        r["image_entries_removed_total"].as_u64().unwrap_or(0) > 0,
        "{r}"
    );
    assert!(r["last_pass"]["pages_rebased"].is_u64(), "{r}");

    // The segments below the horizon are gone, those after it are there.
    let segs = segments_on_disk(&dir);
    assert!(
        segs.iter().all(|s| *s >= horizon / SEG),
        "segments below the horizon {horizon:X} remain: {segs:?}"
    );
    assert!(segs.contains(&(horizon / SEG)), "{segs:?}");
    assert!(
        !segs.contains(&(backup_start / SEG)),
        "the backup start's segment is removed: {segs:?}"
    );

    // Before the horizon: 410; now: served, and equal to the chain from the retained image.
    let (code, body) = status_code(&h, &format!("{branches}?lsn={early}"));
    assert_eq!(code, 410, "{body}");
    for page in [&branches, &accounts] {
        let served = http(&h.listen, "GET", &format!("{page}?cache=none")).expect("GET");
        assert_eq!(
            served.status,
            200,
            "{page}: {}",
            String::from_utf8_lossy(&served.body)
        );
        let full = http(&h.listen, "GET", &format!("{page}?images=none")).expect("GET");
        assert_eq!(full.status, 200, "{}", String::from_utf8_lossy(&full.body));
        assert!(
            served.body == full.body,
            "{page}: served differs from the chain"
        );
    }
    if let Some(page) = &unreplayed_page {
        let (code, body) = status_code(&h, page);
        assert_eq!(
            code, 409,
            "still unreadable after the horizon passed: {body}"
        );
    }
    let metrics = h.metrics().unwrap_or_default();
    assert!(
        metrics.contains("redo_helper_retention_horizon_lsn ")
            && metrics.contains("redo_helper_archive_bytes "),
        "{metrics}"
    );

    for line in h.log_text().lines().filter(|l| l.contains("retention")) {
        println!("{line}");
    }

    // A crash now: the last checkpoint (the base backup's) is before the horizon, so the
    // helper no longer knows every page changed since it. repair refuses (exit 2), in
    // both modes, instead of skipping pages it takes for unchanged.
    h.kill9();
    let mut c = c;
    c.crash();
    for flags in [&["--changed-only"][..], &[]] {
        let out = std::process::Command::new(crate::support::HELPER_BIN)
            .arg("repair")
            .args(flags)
            .arg("--data-dir")
            .arg(&dir)
            .arg("--pgdata")
            .arg(&c.data)
            .output()
            .expect("run repair");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains("before the helper's history"), "{err}");
    }
    c.try_start().expect("crash recovery");

    // kill -9, CHECKPOINT, restart: the saved state brings the horizon back.
    c.sql("CHECKPOINT");
    let target = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &retention_args());
    let st = h.wait_status("catch-up after restart", Duration::from_secs(120), |s| {
        status_lsn(s, "decoded_lsn") >= target
    });
    let restarted = st["retention"]["horizon_lsn"]
        .as_str()
        .map(lsn)
        .unwrap_or(0);
    assert!(restarted >= horizon, "horizon after restart: {st}");
    let (code, body) = status_code(&h, &format!("{branches}?lsn={early}"));
    assert_eq!(code, 410, "{body}");
    if let Some(page) = &unreplayed_page {
        let (code, body) = status_code(&h, page);
        assert_eq!(code, 409, "{body}");
    }
    let (code, body) = status_code(&h, &branches);
    assert_eq!(code, 200, "{body}");
    h.kill9();

    let check = run_check(&dir, &c.data, 500);
    let summary = &check.line;
    let num = |after: &str| check.num(after);
    assert!(num(" pages compared") > 1000, "{summary}");
    assert_eq!(num(" mismatches,"), 0, "{summary}");
    assert!(num(" removed") > 0, "dropped/truncated pages: {summary}");
    if unreplayed.is_some() {
        assert!(num(" unreadable") > 0, "the unreplayed index: {summary}");
    }
    assert_eq!(num(" samples"), 500, "{summary}");

    // A retained image damaged on disk (one flipped bit in the first entry, intact entries
    // after it): images are now the only record of the history before the horizon, so the
    // store refuses to open instead of serving pages rebuilt without it.
    let images = dir.join("images");
    let mut files: Vec<_> = std::fs::read_dir(&images)
        .expect("images dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .collect();
    files.sort();
    let first = files.first().expect("an image file");
    // Entries are at most 8,228 bytes (packed ones less): the entry holding byte 5,000 ends
    // before 13,228, so a file this long has an intact entry after it.
    let first_len = std::fs::metadata(first).map(|m| m.len()).unwrap_or(0);
    assert!(
        first_len >= 5000 + 2 * 8228,
        "need an intact entry after the damaged one: {first_len} bytes"
    );
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(first)
            .expect("open image file");
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 5000).expect("read");
        f.write_all_at(&[b[0] ^ 0x10], 5000).expect("flip");
    }
    let out = std::process::Command::new(crate::support::HELPER_BIN)
        .args(["check", "--data-dir"])
        .arg(&dir)
        .arg("--pgdata")
        .arg(&c.data)
        .output()
        .expect("redo-helper check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check ran on a damaged image: {err}");
    assert!(
        err.contains("damaged") && err.contains("cannot be proven"),
        "{err}"
    );
}
