//! Observability against a real cluster: the live `/metrics` of a helper streaming under
//! load passes `promtool check metrics` (Prometheus' own linter: units, `_total`, histogram
//! shape), every `redo_helper_*` series the Grafana dashboard and the alert rules in
//! `deploy/` use is in it, the rules pass `promtool check rules` and their unit tests, and
//! `run` logs its bootstrap and streaming start at info without RUST_LOG, in text or JSON.
//!
//! promtool comes from the Debian package `prometheus` (scripts/setup.sh installs it); the
//! tests fail, not skip, without it.

use crate::common::{PgCluster, TempDir};
use crate::support::{HELPER_BIN, HelperProcess, http, lsn, status_lsn};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

const RULES: &str = "prometheus/redo-helper.rules.yml";
const RULES_TESTS: &str = "prometheus/redo-helper.rules.test.yml";
const DASHBOARD: &str = "grafana/redo-helper.json";

/// Runs promtool with `args` (and `stdin`); returns (success, stdout + stderr). Panics when
/// promtool is not installed: `scripts/setup.sh` installs it.
fn promtool(args: &[&str], cwd: &Path, stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install the Debian package `prometheus` (make setup)"
            )
        });
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.unwrap_or_default().as_bytes())
            .expect("promtool stdin");
    }
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The sample names of an exposition (`name{labels} value` or `name value` lines): what a
/// PromQL selector can match, so histograms appear as `_bucket`, `_sum` and `_count`.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `redo_helper_*` metric name in `text` (expressions, legends, annotations).
fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("redo_helper_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The value of the sample `series` (a name with its labels, exactly as exposed).
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn live_metrics_pass_promtool_and_cover_the_dashboard_and_the_alert_rules() {
    let c = PgCluster::start_fpw_off(&[]);
    c.pgbench(&["-i", "-s", "1", "-q"]);
    let tmp = TempDir::new("observability");
    let mut h = HelperProcess::spawn_with(
        &c.conninfo(),
        &tmp.path().join("helper"),
        &tmp.path().join("helper.log"),
        &["--image-threshold", "8"],
    );
    h.wait_status("streaming", Duration::from_secs(120), |s| {
        s["state"] == "streaming" && s["consistent"] == true
    });
    // Load: transactions (records, images, chains) and page reads (the read histograms).
    c.pgbench(&["-c", "2", "-t", "300", "-n"]);
    let target = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    h.wait_status("catch-up and images", Duration::from_secs(60), |s| {
        status_lsn(s, "decoded_lsn") >= target && s["images_generated"].as_u64() > Some(0)
    });
    let branches = format!("/page/{}/main/0", c.rel_path("pgbench_branches"));
    let accounts = c.rel_path("pgbench_accounts");
    for path in [branches.clone(), format!("{branches}?cache=none")]
        .into_iter()
        .chain((0..10).map(|b| format!("/page/{accounts}/main/{b}")))
    {
        let r = http(&h.listen, "GET", &path).expect("GET /page");
        assert_eq!(r.status, 200, "GET {path}");
    }

    let metrics = h.metrics().expect("GET /metrics");
    let (ok, lint) = promtool(&["check", "metrics"], tmp.path(), Some(&metrics));
    assert!(
        ok && lint.trim().is_empty(),
        "promtool check metrics:\n{lint}\n{metrics}"
    );

    // The numbers are the live ones.
    let value = |series: &str| {
        sample(&metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert_eq!(value("redo_helper_state{state=\"streaming\"}"), 1.0);
    assert_eq!(value("redo_helper_state{state=\"reconnecting\"}"), 0.0);
    assert_eq!(value("redo_helper_consistent"), 1.0);
    assert!(value("redo_helper_getpage_duration_seconds_count") >= 12.0);
    assert!(value("redo_helper_getpage_duration_seconds_sum") > 0.0);
    assert!(value("redo_helper_deltas_per_read_count") >= 12.0);
    assert!(value("redo_helper_chain_at_image_count") > 0.0);
    assert!(value("redo_helper_records_total") > 1000.0);
    assert!(value("redo_helper_data_dir_free_bytes") > 0.0);
    assert_eq!(
        value("redo_helper_disk_reserve_bytes"),
        64.0 * 1024.0 * 1024.0
    );
    assert_eq!(
        value("redo_helper_worker_panics_total{worker=\"imagegen\"}"),
        0.0
    );
    assert!(
        metrics.contains(&format!(
            "redo_helper_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );

    // Every series the dashboard and the rules select exists in the live exposition.
    let live = sample_names(&metrics);
    for file in [DASHBOARD, RULES, RULES_TESTS] {
        let text = std::fs::read_to_string(deploy_dir().join(file)).expect(file);
        let used = referenced_names(&text);
        assert!(used.len() >= 5, "{file}: only {used:?}");
        let missing: Vec<_> = used.difference(&live).collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics /metrics does not have: {missing:?}\n{metrics}"
        );
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = deploy_dir();
    let (ok, out) = promtool(&["check", "rules", RULES], &dir, None);
    assert!(ok && out.contains("SUCCESS"), "{out}");
    let (ok, out) = promtool(&["test", "rules", RULES_TESTS], &dir, None);
    assert!(ok && out.contains("SUCCESS"), "{out}");
    // The dashboard is JSON Grafana can import: a data source variable, no fixed data source.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(DASHBOARD)).expect("dashboard"))
            .expect("dashboard is JSON");
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(vars.iter().any(|v| v["type"] == "datasource"));
    let panels = dashboard["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{p}");
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "{p}"
        );
    }
}

/// `redo-helper run` with RUST_LOG unset, killed on drop.
struct LoggingHelper {
    child: Child,
    log: PathBuf,
}

impl LoggingHelper {
    fn start(c: &PgCluster, dir: &Path, slot: &str, extra: &[&str]) -> LoggingHelper {
        let log = dir.join(format!("{slot}.log"));
        let child = Command::new(HELPER_BIN)
            .args([
                "run",
                "--connect",
                &c.conninfo(),
                "--slot",
                slot,
                "--data-dir",
            ])
            .arg(dir.join(slot))
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn redo-helper");
        LoggingHelper { child, log }
    }

    /// The log once it contains `line` (panics with the log after a minute).
    fn wait_for(&mut self, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(line) {
                return text;
            }
            if let Ok(Some(code)) = self.child.try_wait() {
                panic!("redo-helper exited ({code}) before logging {line:?}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} in the log within a minute:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LoggingHelper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn run_logs_bootstrap_and_streaming_at_info_without_rust_log_as_text_or_json() {
    let c = PgCluster::start_fpw_off(&[]);
    c.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g");
    let tmp = TempDir::new("logging");
    let mut text = LoggingHelper::start(&c, tmp.path(), "fpw_text", &[]);
    let mut json = LoggingHelper::start(&c, tmp.path(), "fpw_json", &["--log-format", "json"]);

    let log = text.wait_for("streaming from");
    for expected in [
        "bootstrapping from BASE_BACKUP",
        "base backup done",
        "streaming from",
    ] {
        assert!(log.contains(expected), "no {expected:?} in\n{log}");
    }
    assert!(log.contains(" INFO "), "{log}");
    assert!(
        !log.contains(" DEBUG "),
        "debug lines at the default level:\n{log}"
    );

    let log = json.wait_for("streaming from");
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{log}"));
        for key in ["ts", "level", "target", "message"] {
            assert!(v[key].is_string(), "no {key} in {line}");
        }
        assert!(
            v["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("redo_helper")),
            "{line}"
        );
        assert_ne!(v["level"], "DEBUG", "{line}");
        messages.push(v["message"].as_str().unwrap_or_default().to_string());
    }
    for expected in [
        "bootstrapping from BASE_BACKUP",
        "base backup done",
        "streaming from",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(expected)),
            "no {expected:?} in {messages:?}"
        );
    }
}
