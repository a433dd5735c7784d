//! Running the `redo-helper` binary against real clusters in integration tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::common::free_port;

pub const HELPER_BIN: &str = env!("CARGO_BIN_EXE_redo-helper");

/// A running `redo-helper run`; killed on drop.
pub struct HelperProcess {
    pub child: Child,
    /// Its API: `status()` and `metrics()` use the Unix socket in the data directory (the
    /// default), `http(&h.listen, ..)` the loopback TCP listener with the token.
    pub listen: Api,
    pub log: PathBuf,
}

/// Where a helper's API is: its loopback TCP port with the token file, and its socket.
#[derive(Clone)]
pub struct Api {
    pub port: u16,
    pub token_file: PathBuf,
    pub socket: PathBuf,
}

impl Api {
    /// The bearer token the helper wrote into its data directory (None until it did).
    pub fn token(&self) -> Option<String> {
        std::fs::read_to_string(&self.token_file)
            .ok()
            .map(|t| t.trim().to_string())
    }
}

impl HelperProcess {
    pub fn spawn(conninfo: &str, data_dir: &Path, log: &Path) -> HelperProcess {
        Self::spawn_with(conninfo, data_dir, log, &[])
    }

    pub fn spawn_with(
        conninfo: &str,
        data_dir: &Path,
        log: &Path,
        extra: &[&str],
    ) -> HelperProcess {
        Self::spawn_with_env(conninfo, data_dir, log, extra, &[])
    }

    /// Like `spawn_with`, with extra environment variables for the helper process.
    pub fn spawn_with_env(
        conninfo: &str,
        data_dir: &Path,
        log: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> HelperProcess {
        Self::spawn_on_port(free_port(), conninfo, data_dir, log, extra, env)
    }

    /// Like `spawn_with_env`, listening on a port chosen by the caller (helpers that must
    /// know each other's address before they start: `--peers`).
    pub fn spawn_on_port(
        listen: u16,
        conninfo: &str,
        data_dir: &Path,
        log: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> HelperProcess {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("helper log");
        let child = Command::new(HELPER_BIN)
            .args(["run", "--connect", conninfo, "--data-dir"])
            .arg(data_dir)
            .args([
                "--listen",
                &format!("127.0.0.1:{listen}"),
                "--max-backoff-secs",
                "2",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn redo-helper");
        HelperProcess {
            child,
            listen: Api {
                port: listen,
                token_file: data_dir.join("api.token"),
                socket: data_dir.join("api.sock"),
            },
            log: log.to_path_buf(),
        }
    }

    /// GET /status as JSON over the socket (None while the listener is not up).
    pub fn status(&self) -> Option<serde_json::Value> {
        let body = http_get(&self.listen, "/status")?;
        serde_json::from_str(&body).ok()
    }

    pub fn metrics(&self) -> Option<String> {
        http_get(&self.listen, "/metrics")
    }

    /// Waits until `pred(status)` holds; panics with the log after `timeout`.
    pub fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status()
                && pred(&s)
            {
                return s;
            }
            if let Ok(Some(code)) = self.child.try_wait() {
                panic!(
                    "redo-helper exited ({code}) while waiting for {what}\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; status {:?}\n{}",
                    self.status(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the process to exit by itself; returns (success, log).
    pub fn wait_exit(&mut self, timeout: Duration) -> (bool, String) {
        let (code, log) = self.wait_exit_code(timeout);
        (code == Some(0), log)
    }

    /// Waits for the process to exit by itself; returns (exit code, log).
    pub fn wait_exit_code(&mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(code)) = self.child.try_wait() {
                return (code.code(), self.log_text());
            }
            if Instant::now() > deadline {
                panic!(
                    "redo-helper did not exit within {timeout:?}\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Minimal HTTP/1.1 GET over the helper's Unix socket; the body of a 200.
pub fn http_get(api: &Api, path: &str) -> Option<String> {
    let mut s = UnixStream::connect(&api.socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// An HTTP reply: status, raw header block, body bytes.
pub struct HttpReply {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Minimal HTTP/1.1 request with an empty body against the helper's loopback TCP listener,
/// with its token.
pub fn http(api: &Api, method: &str, path: &str) -> Option<HttpReply> {
    let auth = format!("Authorization: Bearer {}\r\n", api.token()?);
    http_raw(
        api.port,
        method,
        path,
        &format!("Host: localhost\r\n{auth}"),
    )
}

/// An HTTP/1.1 request with an empty body and exactly the header lines `headers` (each
/// ending in CRLF) against 127.0.0.1:port.
pub fn http_raw(port: u16, method: &str, path: &str, headers: &str) -> Option<HttpReply> {
    let s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    http_over(s, method, path, headers)
}

/// The request of `http_raw` over any stream (TCP, TLS, a Unix socket).
pub fn http_over<S: Read + Write>(
    mut s: S,
    method: &str,
    path: &str,
    headers: &str,
) -> Option<HttpReply> {
    write!(
        s,
        "{method} {path} HTTP/1.1\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = Vec::new();
    // A TLS peer may close without close_notify after the reply: keep what came.
    let _ = s.read_to_end(&mut resp);
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let headers = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = headers.split_whitespace().nth(1)?.parse().ok()?;
    Some(HttpReply {
        status,
        headers,
        body: resp[split + 4..].to_vec(),
    })
}

/// Parses "X/Y" into a u64 LSN.
pub fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.trim().split_once('/').unwrap_or(("0", "0"));
    (u64::from_str_radix(hi, 16).unwrap_or(0) << 32) | u64::from_str_radix(lo, 16).unwrap_or(0)
}

pub fn status_lsn(s: &serde_json::Value, field: &str) -> u64 {
    s[field].as_str().map(lsn).unwrap_or(0)
}

/// The summary line of a successful `redo-helper check --pgdata`.
pub struct CheckSummary {
    pub line: String,
}

impl CheckSummary {
    /// The number printed just before `after` in the summary (`"1234 pages compared"`).
    pub fn num(&self, after: &str) -> u64 {
        self.line
            .split(after)
            .next()
            .and_then(|s| s.split_whitespace().last())
            .and_then(|n| n.trim_start_matches('(').parse().ok())
            .unwrap_or_else(|| panic!("no `{after}` in {}", self.line))
    }
}

/// Runs `redo-helper check` of the helper directory `data_dir` against `pgdata` with
/// `samples` historical reads, asserts that it succeeded, and returns its summary line.
/// `check` (GetPage of every page the helper serves, against the data files) that must
/// compare more than `min_pages` pages with no mismatch, unreadable page or error.
pub fn run_check_clean(data_dir: &Path, pgdata: &Path, min_pages: u64) -> CheckSummary {
    let check = run_check(data_dir, pgdata, 300);
    let summary = &check.line;
    assert!(check.num(" pages compared") > min_pages, "{summary}");
    assert_eq!(check.num(" mismatches,"), 0, "{summary}");
    assert_eq!(check.num(" unreadable"), 0, "{summary}");
    assert_eq!(check.num(" errors"), 0, "{summary}");
    check
}

pub fn run_check(data_dir: &Path, pgdata: &Path, samples: u32) -> CheckSummary {
    let out = Command::new(HELPER_BIN)
        .args(["check", "--data-dir"])
        .arg(data_dir)
        .arg("--pgdata")
        .arg(pgdata)
        .args(["--samples", &samples.to_string()])
        .output()
        .expect("redo-helper check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(out.status.success(), "check failed:\n{stdout}\n{stderr}");
    CheckSummary {
        line: stdout.lines().last().unwrap_or_default().to_string(),
    }
}
