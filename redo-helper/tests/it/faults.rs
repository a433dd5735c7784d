//! Faults a storage service meets, injected into a real helper following a real cluster:
//! a worker thread that panics (the test-only `REDO_HELPER_TEST_PANIC` hook) is caught,
//! logged, counted in `/metrics` and started again; one that keeps panicking ends the
//! process with exit status 70 instead of leaving the helper degraded in silence.

use crate::common::{PgCluster, TempDir};
use crate::support::HelperProcess;
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
