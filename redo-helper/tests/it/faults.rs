//! Faults a storage service meets, injected into a real helper following a real cluster:
//! a worker thread that panics (the test-only `REDO_HELPER_TEST_PANIC` hook) is caught,
//! logged, counted in `/metrics` and started again; one that keeps panicking ends the
//! process with exit status 70 instead of leaving the helper degraded in silence. A full
//! disk, filled by the helper's own WAL or by another writer, is left by retention.

use crate::common::{PgCluster, TempDir};
use crate::support::{HelperProcess, run_check_clean};
use std::time::Duration;

fn panics_of(metrics: &str, worker: &str) -> u64 {
    let prefix = format!("redo_helper_worker_panics_total{{worker=\"{worker}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_panicking_worker_is_restarted_and_counted_and_a_failing_one_ends_the_helper() {
    let c = PgCluster::start_fpw_off(&[]);
    c.pgbench(&["-i", "-s", "1", "-q"]);
    let tmp = TempDir::new("faults-panic");
    // Image generation panics twice, then works: images still get made.
    let mut h = HelperProcess::spawn_with_env(
        &c.conninfo(),
        &tmp.path().join("helper"),
        &tmp.path().join("helper.log"),
        &["--image-threshold", "4"],
        &[("REDO_HELPER_TEST_PANIC", "imagegen:2")],
    );
    h.wait_status("streaming", Duration::from_secs(120), |s| {
        s["state"] == "streaming"
    });
    c.pgbench(&["-n", "-c", "2", "-t", "400"]);
    let st = h.wait_status("images after the panics", Duration::from_secs(120), |s| {
        s["images_generated"].as_u64().unwrap_or(0) > 0
    });
    assert_eq!(st["state"], "streaming", "{st}");
    let metrics = h.metrics().unwrap_or_default();
    assert_eq!(panics_of(&metrics, "imagegen"), 2, "{metrics}");
    assert_eq!(panics_of(&metrics, "retention"), 0, "{metrics}");
    let log = h.log_text();
    assert!(
        log.contains("imagegen-") && log.contains("panicked") && log.contains("starting it again"),
        "{log}"
    );
    h.kill9();

    // Retention panics at every pass: after five restarts within ten minutes the helper
    // exits with status 70.
    let tmp = TempDir::new("faults-panic-exit");
    let mut h = HelperProcess::spawn_with_env(
        &c.conninfo(),
        &tmp.path().join("helper"),
        &tmp.path().join("helper.log"),
        &["--retain", "64MB", "--retention-interval-ms", "100"],
        &[("REDO_HELPER_TEST_PANIC", "retention:100")],
    );
    let (code, log) = h.wait_exit_code(Duration::from_secs(180));
    assert_eq!(code, Some(70), "{log}");
    assert!(log.contains("retention panicked 6 times"), "{log}");
}

/// A small tmpfs mounted for one test (root only), unmounted on drop.
struct SmallFs {
    dir: std::path::PathBuf,
}

impl SmallFs {
    fn mount(dir: std::path::PathBuf, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(&dir).expect("mount point");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallFs { dir })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// The full-disk tests' helper: a 32 MB history, passes `interval_ms` apart, small image
/// files so compaction frees space in small steps.
fn small_disk_args(interval_ms: &'static str) -> [&'static str; 8] {
    [
        "--retain",
        "32MB",
        "--retention-interval-ms",
        interval_ms,
        "--image-threshold",
        "64",
        "--image-file-entries",
        "256",
    ]
}

/// [`small_disk_args`] with `--disk-reserve 4MB`: less than one step's images, so that
/// only a reserve retention learnt can hold a step.
fn reserve_4mb_args(interval_ms: &'static str) -> Vec<&'static str> {
    let mut a = small_disk_args(interval_ms).to_vec();
    a.extend(["--disk-reserve", "4MB"]);
    a
}

/// Bytes available on the filesystem of `dir` (`df`).
fn avail_bytes(dir: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse::<u64>().ok())
        .expect("df avail")
}

/// pgbench for a second between WAL switches, `rounds` times (each switch adds the rest of a
/// 16 MB segment); returns the flush LSN after.
fn wal_burst(c: &PgCluster, rounds: usize) -> u64 {
    for _ in 0..rounds {
        c.pgbench(&["-n", "-c", "2", "-T", "1"]);
        c.sql("SELECT pg_switch_wal()");
    }
    crate::support::lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"))
}

/// Another writer takes every byte of the filesystem of `dir` (the helper stopped: nothing
/// frees space meanwhile); returns its file.
fn fill_to_the_last_byte(dir: &std::path::Path) -> std::path::PathBuf {
    let filler = dir.join("filler");
    let filled = (0..20).any(|_| {
        let _ = std::fs::remove_file(&filler);
        let avail = avail_bytes(dir);
        avail < (1 << 20) || fallocate(&filler, avail)
    });
    assert!(filled, "could not fill the filesystem");
    filler
}

/// Waits until the helper has decoded the WAL up to `target`; returns the status.
fn wait_received(h: &mut HelperProcess, target: u64) -> serde_json::Value {
    h.wait_status("received", Duration::from_secs(180), |s| {
        crate::support::status_lsn(s, "decoded_lsn") >= target
    })
}

/// Waits until the helper streams with the WAL up to `target` decoded, the filler still in
/// place (retention made the room); returns the status.
fn caught_up_beside(
    h: &mut HelperProcess,
    target: u64,
    filler: &std::path::Path,
) -> serde_json::Value {
    let st = h.wait_status(
        "caught up on a disk filled by another writer",
        Duration::from_secs(300),
        |s| crate::support::status_lsn(s, "decoded_lsn") >= target && s["state"] == "streaming",
    );
    assert!(filler.exists(), "the filler stays: retention made the room");
    st
}

/// Allocates `len` bytes to `path` (its blocks taken, as a writer that fills the disk).
fn fallocate(path: &std::path::Path, len: u64) -> bool {
    std::process::Command::new("fallocate")
        .args(["-l", &len.to_string()])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn retention_frees_space_on_a_full_disk() {
    let tmp = TempDir::new("faults-disk-full");
    let Some(fs) = SmallFs::mount(tmp.path().join("small"), "500M") else {
        // Mounting needs root, as `make test` runs here; say so rather than pass silently.
        panic!("cannot mount a tmpfs for the disk-full test (needs root)");
    };
    let c = PgCluster::start_fpw_off(&[]);
    c.pgbench(&["-i", "-s", "2", "-q"]);
    let dir = fs.dir.join("helper");
    let log = tmp.path().join("helper.log");
    // Passes 20 s apart: the WAL received in between piles up.
    let args = small_disk_args("20000");
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &args);
    h.wait_status("streaming", Duration::from_secs(120), |s| {
        s["state"] == "streaming"
    });
    h.kill9();
    // ~200 MB of WAL the helper has not received (the slot keeps it): pgbench between WAL
    // switches, each of which adds the rest of a 16 MB segment.
    let target = wal_burst(&c, 12);

    // Fill the filesystem but for the 64 MB headroom and 100 MB more. Restarted, the helper
    // receives the WAL faster than a pass comes: the archive stops at the headroom (without
    // it, it fills the disk); the next pass needs new images of the pages changed before its
    // horizon and its state file before it may delete segments, and only the headroom has
    // room for them. Without the headroom no pass can ever write, and the helper stays in
    // disk_full.
    let filler = fs.dir.join("filler");
    // The file the reserve is also held in is released by the first pass that finds less
    // than the reserve free; here the archive stopped first, so its headroom is what the
    // passes write in.
    assert!(fallocate(&filler, avail_bytes(&fs.dir) - (164 << 20)));
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &args);
    let st = h.wait_status("caught up on a full disk", Duration::from_secs(300), |s| {
        crate::support::status_lsn(s, "decoded_lsn") >= target && s["state"] == "streaming"
    });
    assert!(filler.exists(), "the filler stays: retention made the room");
    let text = h.log_text();
    assert!(
        text.contains("waiting for retention to make room"),
        "{text}"
    );
    assert!(
        st["retention"]["passes"].as_u64().unwrap_or(0) > 0
            && st["retention"]["segments_removed_total"]
                .as_u64()
                .unwrap_or(0)
                > 0,
        "{st}"
    );
    for line in text
        .lines()
        .filter(|l| l.contains("retention: horizon"))
        .take(8)
    {
        println!("{line}");
    }
    h.kill9();
    drop(fs);
}

#[test]
fn retention_releases_the_reserve_when_another_writer_fills_the_disk() {
    let tmp = TempDir::new("faults-disk-taken");
    let Some(fs) = SmallFs::mount(tmp.path().join("small"), "500M") else {
        panic!("cannot mount a tmpfs for the disk-full test (needs root)");
    };
    let c = PgCluster::start_fpw_off(&[]);
    c.pgbench(&["-i", "-s", "2", "-q"]);
    let dir = fs.dir.join("helper");
    let log = tmp.path().join("helper.log");
    // Retention passes 10 minutes apart: the WAL received piles up beyond --retain.
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &small_disk_args("600000"));
    let st = h.wait_status("streaming", Duration::from_secs(120), |s| {
        s["state"] == "streaming"
    });
    let reserve = dir.join("disk-reserve");
    assert_eq!(st["retention"]["disk_reserve_held"], true, "{st}");
    assert_eq!(
        std::fs::metadata(&reserve).map(|m| m.len()).ok(),
        Some(64 << 20)
    );
    // ~150 MB of WAL, received.
    let target = wal_burst(&c, 9);
    wait_received(&mut h, target);
    h.kill9();

    // Another writer takes every byte, the helper's headroom too: without the file no pass
    // could write its images or state, so none could delete a segment, and the helper could
    // receive nothing more.
    let filler = fill_to_the_last_byte(&fs.dir);
    // ~100 MB more that the slot keeps, then the helper again with passes every second.
    let target = wal_burst(&c, 6);
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &small_disk_args("1000"));
    let st = caught_up_beside(&mut h, target, &filler);
    let text = h.log_text();
    assert!(
        text.contains("disk reserve:") && text.contains("for retention"),
        "{text}"
    );
    assert!(
        st["retention"]["segments_removed_total"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{st}"
    );
    println!(
        "retention after the reserve was released: {}",
        st["retention"]
    );
    // Every page the helper serves equals the data files: the images the passes wrote in
    // the reserve's room are the pages.
    crate::redo_verify::checkpoint_and_stop(&c, h);
    run_check_clean(&dir, &c.data, 500);
    drop(fs);
}

/// One segment's step needs more than `--disk-reserve` (4 MB against ~27 MB of images: a
/// 16 MB segment of pgbench at scale 10 changes ~3,300 pages): retention
/// learns what a step writes, holds twice that, and gets out of a disk another writer
/// filled. With the 4 MB reserve alone no step would fit and the helper would stay in
/// `disk_full` (the test then times out).
#[test]
fn retention_learns_the_reserve_a_step_needs() {
    let tmp = TempDir::new("faults-disk-learnt");
    let Some(fs) = SmallFs::mount(tmp.path().join("small"), "900M") else {
        panic!("cannot mount a tmpfs for the disk-full test (needs root)");
    };
    let c = PgCluster::start_fpw_off(&[]);
    c.pgbench(&["-i", "-s", "10", "-q"]);
    let dir = fs.dir.join("helper");
    let log = tmp.path().join("helper.log");
    // Passes every second while ~100 MB arrive: they measure their steps.
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &reserve_4mb_args("1000"));
    h.wait_status("streaming", Duration::from_secs(120), |s| {
        s["state"] == "streaming"
    });
    let target = wal_burst(&c, 6);
    let st = h.wait_status("passes measured a step", Duration::from_secs(180), |s| {
        crate::support::status_lsn(s, "decoded_lsn") >= target
            && s["retention"]["rebase_bytes_per_segment"]
                .as_u64()
                .unwrap_or(0)
                > 0
    });
    let learnt = st["disk_reserve_bytes"].as_u64().unwrap_or(0);
    let per_segment = st["retention"]["rebase_bytes_per_segment"]
        .as_u64()
        .unwrap_or(0);
    println!("a step wrote up to {per_segment} bytes per segment; reserve {learnt} bytes");
    assert!(learnt > 4 << 20 && learnt >= per_segment, "{st}");
    h.kill9();

    // Passes 10 minutes apart: ~150 MB pile up beyond --retain. The reserve learnt before
    // the restart is in force (retention.json), in the file too.
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &reserve_4mb_args("600000"));
    let target = wal_burst(&c, 9);
    let st = wait_received(&mut h, target);
    let reserve = st["disk_reserve_bytes"].as_u64().unwrap_or(0);
    assert!(reserve >= learnt, "{st}");
    assert_eq!(
        std::fs::metadata(dir.join("disk-reserve"))
            .map(|m| m.len())
            .ok(),
        Some(reserve)
    );
    h.kill9();

    // Another writer takes every byte; ~100 MB more wait in the slot.
    let filler = fill_to_the_last_byte(&fs.dir);
    let target = wal_burst(&c, 6);
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &reserve_4mb_args("1000"));
    let st = caught_up_beside(&mut h, target, &filler);
    let text = h.log_text();
    assert!(text.contains("one WAL segment at a time"), "{text}");
    println!(
        "retention after the learnt reserve was released: {}",
        st["retention"]
    );
    crate::redo_verify::checkpoint_and_stop(&c, h);
    run_check_clean(&dir, &c.data, 1_000);
    let _ = std::fs::remove_file(&filler);

    // The windows of 36 hours age with passes (a pass rolls them before adding its step).
    // First, segments of a few pages each take the horizon past every pgbench segment, so
    // that later passes measure steps of a few KB (autovacuum off: it would fill them).
    c.sql("ALTER SYSTEM SET autovacuum = off");
    c.sql("SELECT pg_reload_conf()");
    c.sql("VACUUM");
    let quiet_from = crate::support::lsn(&c.sql("SELECT pg_current_wal_insert_lsn()"));
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &reserve_4mb_args("1000"));
    quiet_segments(&c, 4);
    let st = h.wait_status(
        "the horizon past the pgbench WAL",
        Duration::from_secs(120),
        |s| crate::support::status_lsn(&s["retention"], "horizon_lsn") >= quiet_from,
    );
    let mut horizon = crate::support::status_lsn(&st["retention"], "horizon_lsn");
    h.kill9();
    // Aged by one window, a pass keeps the step (the window before); aged by two, it is
    // --disk-reserve again after the next pass, in /status and in the reserve file.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    const WINDOW: u64 = 36 * 3600;
    for (windows, kept) in [(1, true), (2, false)] {
        age_step_window(&dir, now - windows * WINDOW - 60);
        quiet_segments(&c, 2);
        let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &reserve_4mb_args("1000"));
        let st = h.wait_status("a pass moved the horizon", Duration::from_secs(120), |s| {
            crate::support::status_lsn(&s["retention"], "horizon_lsn") > horizon
        });
        horizon = crate::support::status_lsn(&st["retention"], "horizon_lsn");
        let reserve = st["disk_reserve_bytes"].as_u64().unwrap_or(0);
        let step = st["retention"]["rebase_bytes_per_segment"]
            .as_u64()
            .unwrap_or(0);
        println!(
            "state aged {windows} window(s), then a pass: step {step} bytes, reserve {reserve} bytes"
        );
        if kept {
            assert!(reserve >= learnt && step > 1 << 20, "{st}");
        } else {
            assert!(reserve == 4 << 20 && step < 1 << 20, "{st}");
            assert_eq!(
                std::fs::metadata(dir.join("disk-reserve"))
                    .map(|m| m.len())
                    .ok(),
                Some(4 << 20)
            );
        }
        h.kill9();
    }
    drop(fs);
}

/// A pass that moves the horizon several segments at once rebuilds a page changed in each of
/// them once; a pass short of space steps one segment at a time and rebuilds it at every
/// step. The reserve learnt from the first must hold the second: here every segment changes
/// the same ~3,000 pages of one table (~25 MB of images a step), the first pass after a
/// restart moves the horizon 8 segments, 8 more segments arrive, and then another writer
/// fills the disk. A reserve sized from that pass's average per segment (~3 MB, which the
/// assertion on the learnt step refuses) would hold no step, and the helper would stay in
/// `disk_full`.
#[test]
fn retention_sizes_the_reserve_for_one_segment_steps() {
    let tmp = TempDir::new("faults-disk-steps");
    let Some(fs) = SmallFs::mount(tmp.path().join("small"), "900M") else {
        panic!("cannot mount a tmpfs for the disk-full test (needs root)");
    };
    let c = PgCluster::start_fpw_off(&[]);
    c.sql("CREATE TABLE hot (id int, v int, pad char(200)) WITH (fillfactor = 40)");
    c.sql("INSERT INTO hot SELECT g, 0, 'x' FROM generate_series(1, 39000) g");
    let pages: u64 = c
        .sql("SELECT pg_relation_size('hot') / 8192")
        .trim()
        .parse()
        .expect("pages of hot");
    let dir = fs.dir.join("helper");
    let log = tmp.path().join("helper.log");
    // Passes 10 minutes apart while 10 segments arrive.
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &reserve_4mb_args("600000"));
    h.wait_status("streaming", Duration::from_secs(120), |s| {
        s["state"] == "streaming"
    });
    let target = hot_segments(&c, 10);
    wait_received(&mut h, target);
    h.kill9();

    // Restarted with passes every second: the first moves the horizon to 32 MB before the
    // end, 8 segments at once, and measures the largest one-segment step among them.
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &reserve_4mb_args("1000"));
    let st = h.wait_status("a pass measured its steps", Duration::from_secs(120), |s| {
        s["retention"]["rebase_bytes_per_segment"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    let per_segment = st["retention"]["rebase_bytes_per_segment"]
        .as_u64()
        .unwrap_or(0);
    let reserve = st["disk_reserve_bytes"].as_u64().unwrap_or(0);
    let first = h
        .log_text()
        .lines()
        .find(|l| l.contains("retention: horizon"))
        .map(str::to_string)
        .unwrap_or_default();
    println!(
        "{pages} pages changed in every segment; {first}\na step of one segment: up to \
         {per_segment} bytes; reserve {reserve} bytes"
    );
    // Images an image generation already took at a page's last change in a segment cost
    // nothing; at a threshold of 64 changes (13 a segment here) most pages have none.
    assert!(
        per_segment >= pages * 8228 / 2 && reserve >= per_segment,
        "{st}"
    );
    h.kill9();

    // Passes 10 minutes apart again: 8 segments pile up beyond --retain.
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &reserve_4mb_args("600000"));
    let target = hot_segments(&c, 8);
    wait_received(&mut h, target);
    h.kill9();

    // Another writer takes every byte; 6 more segments wait in the slot.
    let filler = fill_to_the_last_byte(&fs.dir);
    let target = hot_segments(&c, 6);
    let mut h = HelperProcess::spawn_with(&c.conninfo(), &dir, &log, &reserve_4mb_args("1000"));
    let st = caught_up_beside(&mut h, target, &filler);
    println!("retention on the full disk: {}", st["retention"]);
    crate::redo_verify::checkpoint_and_stop(&c, h);
    run_check_clean(&dir, &c.data, pages);
    drop(fs);
}

/// `n` WAL segments, each changing every page of `hot` (one update of each row).
fn hot_segments(c: &PgCluster, n: usize) -> u64 {
    for _ in 0..n {
        c.sql("UPDATE hot SET v = v + 1");
        c.sql("SELECT pg_switch_wal()");
    }
    crate::support::lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"))
}

/// `n` WAL segments that change a few pages each.
fn quiet_segments(c: &PgCluster, n: usize) {
    c.sql("CREATE TABLE IF NOT EXISTS quiet (x int)");
    for i in 0..n {
        c.sql(&format!("INSERT INTO quiet VALUES ({i})"));
        c.sql("SELECT pg_switch_wal()");
    }
}

/// Moves the start of the measured steps' window in `dir`'s `retention.json` to `unix`.
fn age_step_window(dir: &std::path::Path, unix: u64) {
    let path = dir.join("retention.json");
    let text = std::fs::read_to_string(&path).expect("retention.json");
    let mut state: serde_json::Value = serde_json::from_str(&text).expect("retention.json parses");
    state["rebase_window_started_unix"] = unix.into();
    std::fs::write(&path, state.to_string()).expect("write retention.json");
}
