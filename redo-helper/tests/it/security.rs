//! Who can reach the helper's data and controls: another OS user (`nobody`) reads none of
//! the data directory and gets nothing from the API without the token; the TCP listener
//! checks the token, the Host header and browsers' Origin; idle connections cannot starve
//! the helper; off loopback it needs TLS, which works with a certificate made here.

use crate::common::{PgCluster, TempDir, free_port};
use crate::support::{HELPER_BIN, HelperProcess, http, http_raw, status_lsn};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The unprivileged OS user the tests act as.
const OTHER_USER: &str = "nobody";

fn as_other_user(args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", OTHER_USER, "--"])
        .args(args)
        .output()
        .expect("runuser")
}

/// Every entry under `dir` (and `dir`) with group or other permission bits.
fn exposed_entries(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue; // removed meanwhile (retention, a temp file)
        };
        if meta.permissions().mode() & 0o077 != 0 {
            out.push(format!("{} {:o}", p.display(), meta.permissions().mode()));
        }
        if meta.is_dir()
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
        }
    }
    out
}

fn status_code(r: Option<crate::support::HttpReply>) -> u16 {
    r.map(|r| r.status).unwrap_or(0)
}

#[test]
fn other_users_read_nothing_and_idle_connections_do_not_starve_the_helper() {
    let c = PgCluster::start(
        &[],
        &[
            "listen_addresses = '127.0.0.1'",
            "wal_level = replica",
            "max_wal_senders = 4",
        ],
    );
    let tmp = TempDir::new("security");
    // Make the temporary directory traversable, so that only the helper's own modes protect
    // its data directory.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("helper");
    let mut h = HelperProcess::spawn_with(
        &c.conninfo(),
        &dir,
        &tmp.path().join("helper.log"),
        &["--max-connections", "100"],
    );
    h.wait_status("streaming", Duration::from_secs(120), |s| {
        s["state"] == "streaming" && s["consistent"] == true
    });
    let api = h.listen.clone();

    // The data directory: 0700, every file 0600, whatever the umask of the test (022).
    let exposed = exposed_entries(&dir);
    assert!(exposed.is_empty(), "group/world accessible: {exposed:?}");
    let authid = dir.join("base/1664/0/1260");
    assert!(authid.exists(), "pg_authid's base file is in the store");
    for path in [&authid, &dir.join("api.token"), &dir.join("helper.json")] {
        let out = as_other_user(&["cat", path.to_str().unwrap()]);
        assert!(
            !out.status.success(),
            "{OTHER_USER} read {}",
            path.display()
        );
    }
    let sock = dir.join("api.sock");
    let out = as_other_user(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--unix-socket",
        sock.to_str().unwrap(),
        "http://localhost/status",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "000",
        "{OTHER_USER} reached the socket"
    );

    // TCP: nothing without the token, from anyone; pg_authid's page included.
    let url = format!("http://127.0.0.1:{}/page/1664/0/1260/main/0", api.port);
    let out = as_other_user(&["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    let host = "Host: localhost\r\n";
    let token = api.token().expect("token file");
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let wrong = format!(
        "Authorization: Bearer {}\r\n",
        token.replace(|c| c != '0', "0")
    );
    for path in ["/status", "/metrics", "/page/1664/0/1260/main/0"] {
        assert_eq!(
            status_code(http_raw(api.port, "GET", path, host)),
            401,
            "{path}"
        );
        let with_wrong = format!("{host}{wrong}");
        assert_eq!(
            status_code(http_raw(api.port, "GET", path, &with_wrong)),
            401
        );
    }
    let unauth = http_raw(api.port, "POST", "/imagegen/pause", host).unwrap();
    assert_eq!(unauth.status, 401);
    assert_eq!(unauth.header("www-authenticate"), Some("Bearer"));
    // DNS rebinding (an attacker's name in Host) and a browser's cross-site POST: refused
    // even with the token.
    let rebound = format!("Host: attacker.example:{}\r\n{bearer}", api.port);
    assert_eq!(
        status_code(http_raw(api.port, "GET", "/status", &rebound)),
        421
    );
    let csrf = format!("{host}{bearer}Origin: http://attacker.example\r\n");
    assert_eq!(
        status_code(http_raw(api.port, "POST", "/imagegen/pause", &csrf)),
        403
    );
    // With the token: served.
    let page = http(&api, "GET", "/page/1664/0/1260/main/0").unwrap();
    assert_eq!((page.status, page.body.len()), (200, 8192));

    // 1,000 idle connections (no request sent): 100 are held until the header timeout,
    // the rest are closed at once. The socket still answers and WAL is still acknowledged.
    let fds_before = std::fs::read_dir(format!("/proc/{}/fd", h.child.id()))
        .map(|d| d.count())
        .unwrap_or(0);
    let started = Instant::now();
    let idle: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", api.port)).ok())
        .collect();
    assert!(idle.len() >= 900, "only {} connections opened", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    let fds_during = std::fs::read_dir(format!("/proc/{}/fd", h.child.id()))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        fds_during <= fds_before + 110,
        "descriptors {fds_before} -> {fds_during} with 1,000 idle connections"
    );
    let wal_end = c.sql(
        "CREATE TABLE idle_probe AS SELECT g FROM generate_series(1, 20000) g; \
         SELECT pg_current_wal_insert_lsn()",
    );
    let target = crate::support::lsn(wal_end.lines().last().unwrap_or_default());
    let s = h.wait_status(
        "WAL acknowledged under idle connections",
        Duration::from_secs(30),
        |s| status_lsn(s, "flush_lsn") >= target,
    );
    assert_eq!(s["state"], "streaming");
    let slot_flush = c.sql(&format!(
        "SELECT restart_lsn >= '{}' FROM pg_replication_slots WHERE slot_name = 'fpw_pushdown'",
        wal_end.lines().last().unwrap_or_default().trim()
    ));
    println!(
        "{} idle connections; helper descriptors {fds_before} -> {fds_during}; WAL acknowledged {:.1}s after they opened (slot caught up: {})",
        idle.len(),
        started.elapsed().as_secs_f64(),
        slot_flush.trim()
    );
    // Once the header timeout (10 s) has closed the held ones, TCP serves again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let reply = loop {
        match http(&api, "GET", "/status") {
            Some(r) if r.status == 200 => break r,
            _ if Instant::now() > deadline => panic!("TCP not served again\n{}", h.log_text()),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    assert_eq!(reply.status, 200);
    drop(idle);
    assert!(h.log_text().contains("closed at once"), "{}", h.log_text());
    assert!(
        h.child.try_wait().unwrap().is_none(),
        "the helper is still running"
    );
}

/// Runs `redo-helper run` that must stop at once; returns its stderr.
fn run_refused(dir: &Path, extra: &[&str]) -> String {
    let out = Command::new(HELPER_BIN)
        .args(["run", "--connect", "host=127.0.0.1 port=1", "--data-dir"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("redo-helper run");
    assert!(!out.status.success(), "started: {extra:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unsafe_configurations_are_refused_with_the_fix() {
    let tmp = TempDir::new("security-refused");
    let dir = tmp.path().join("helper");
    // A non-loopback TCP listener without TLS.
    let port = free_port();
    let err = run_refused(&dir, &["--listen", &format!("0.0.0.0:{port}")]);
    assert!(
        err.contains("without TLS") && err.contains("--tls-cert"),
        "{err}"
    );
    // A data directory others can read, with data in it.
    std::fs::write(dir.join("helper.json"), "{}").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = run_refused(&dir, &[]);
    assert!(
        err.contains(&format!("chmod 0700 {}", dir.display())),
        "{err}"
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A token file others can read.
    let token = dir.join("api.token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = run_refused(&dir, &["--listen", &format!("127.0.0.1:{port}")]);
    assert!(
        err.contains(&format!("chmod 0600 {}", token.display())),
        "{err}"
    );
    assert!(
        !err.contains("0123456789abcdef"),
        "the token is never printed: {err}"
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 and localhost signed by it
/// (`server.pem`, key `server.key`, 0600) in `d`.
pub(crate) fn make_server_certificate(d: &Path) {
    // A CA and a server certificate for 127.0.0.1 and localhost.
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=fpw test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    let key = d.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn tls_with_a_generated_certificate() {
    let tmp = TempDir::new("security-tls");
    let d = tmp.path();
    make_server_certificate(d);
    let key = d.join("server.key");

    let dir = d.join("helper");
    let log = d.join("helper.log");
    // No server to stream from: the API answers /status while the helper retries.
    let mut h = HelperProcess::spawn_with(
        "host=127.0.0.1 port=1",
        &dir,
        &log,
        &[
            "--tls-cert",
            d.join("server.pem").to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    // (spawn_with adds --listen 127.0.0.1:<its port>)
    let port_used = h.listen.port;
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.listen.token().is_none() {
        assert!(Instant::now() < deadline, "no token\n{}", h.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let token = h.listen.token().unwrap();
    let curl = |extra: &[&str]| -> String {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args(extra)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = format!("https://127.0.0.1:{port_used}/status");
    let auth = format!("Authorization: Bearer {token}");
    let ca = d.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let mut ok = String::new();
    while Instant::now() < deadline {
        ok = curl(&["--cacert", ca, "-H", &auth, &url]);
        if ok == "200" {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ok, "200", "verified TLS with the token\n{}", h.log_text());
    assert_eq!(
        curl(&["--cacert", ca, &url]),
        "401",
        "TLS without the token"
    );
    assert_eq!(
        curl(&["-H", &auth, &url]),
        "000",
        "an unknown CA is not trusted"
    );
    let plain = format!("http://127.0.0.1:{port_used}/status");
    assert_ne!(
        curl(&["-H", &auth, &plain]),
        "200",
        "no plaintext on the TLS port"
    );
    assert!(h.child.try_wait().unwrap().is_none(), "{}", h.log_text());
}
