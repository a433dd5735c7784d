//! The replication connection's security against a real PostgreSQL 15 with `ssl = on` and
//! certificates made here with the openssl CLI (a CA, a server certificate for
//! localhost/127.0.0.1, a client certificate, and a second, unrelated CA): sslmode
//! verify-full/verify-ca/require, SCRAM-SHA-256-PLUS channel binding, client certificate
//! authentication, the refusal of a cleartext password over plain TCP, require_auth,
//! Unix sockets, the password file and its permission check, connect_timeout. The cases
//! share one cluster and run `redo-helper probe` (which connects exactly as `run` does);
//! one `redo-helper run` streams over verify-full TLS with SCRAM-SHA-256-PLUS and, once its
//! role loses REPLICATION, stops and prints the SQL that drops its slot.

use crate::common::{PgCluster, TempDir};
use crate::support::{HELPER_BIN, HelperProcess, lsn, status_lsn};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>.crt`, `<name>.key`), self-signed.
pub fn make_ca(dir: &Path, name: &str) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        dir,
    );
}

/// A certificate `<name>.crt`/`<name>.key` signed by `ca`, with the given extensions.
pub fn make_cert(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext file");
    openssl(
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
        dir,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
        dir,
    );
}

struct TlsCluster {
    pg: PgCluster,
    /// Certificates and keys (readable by the postgres user).
    certs: TempDir,
    /// An empty home directory for the client: no ~/.postgresql, no ~/.pgpass.
    home: TempDir,
}

impl TlsCluster {
    fn path(&self, file: &str) -> String {
        self.certs.path().join(file).display().to_string()
    }

    /// `redo-helper probe` with `conninfo` and `env`, no PG* variable from the test's
    /// environment; returns (success, stdout, stderr).
    fn probe(&self, conninfo: &str, env: &[(&str, &str)]) -> (bool, String, String) {
        let mut cmd = Command::new(HELPER_BIN);
        cmd.args(["probe", "--connect", conninfo]);
        for (k, _) in std::env::vars() {
            if k.starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", self.home.path()).envs(env.iter().copied());
        let out = cmd.output().expect("redo-helper probe");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn probe_ok(&self, conninfo: &str, env: &[(&str, &str)]) -> String {
        let (ok, out, err) = self.probe(conninfo, env);
        assert!(ok, "probe {conninfo:?} failed:\n{out}\n{err}");
        out
    }

    fn probe_err(&self, conninfo: &str, env: &[(&str, &str)]) -> String {
        let (ok, out, err) = self.probe(conninfo, env);
        assert!(!ok, "probe {conninfo:?} should fail:\n{out}\n{err}");
        err
    }
}

fn tls_cluster() -> TlsCluster {
    let certs = TempDir::new("conn-certs");
    let dir = certs.path();
    make_ca(dir, "ca");
    make_ca(dir, "other_ca");
    make_cert(
        dir,
        "ca",
        "server",
        "localhost",
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    make_cert(
        dir,
        "ca",
        "client",
        "cert_user",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    // The server's key: the postgres user's, 0600 (PostgreSQL refuses anything wider).
    let chown = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(dir.join("server.key"))
        .status()
        .expect("chown");
    assert!(chown.success());
    for f in ["server.key", "client.key", "ca.key", "other_ca.key"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600))
            .expect("chmod key");
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let hba = dir.join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\n\
         local replication all trust\n\
         hostssl replication scram_user 127.0.0.1/32 scram-sha-256\n\
         host replication pw_user 127.0.0.1/32 password\n\
         hostssl replication cert_user 127.0.0.1/32 cert\n\
         host replication pass_user 127.0.0.1/32 scram-sha-256\n\
         hostssl replication postgres 127.0.0.1/32 trust\n",
    )
    .expect("pg_hba.conf");
    let p = |f: &str| dir.join(f).display().to_string();
    let conf = [
        "listen_addresses = '127.0.0.1'".to_string(),
        "wal_level = replica".into(),
        "max_wal_senders = 10".into(),
        "autovacuum = off".into(),
        "full_page_writes = off".into(),
        "checkpoint_timeout = 1h".into(),
        "ssl = on".into(),
        format!("ssl_cert_file = '{}'", p("server.crt")),
        format!("ssl_key_file = '{}'", p("server.key")),
        format!("ssl_ca_file = '{}'", p("ca.crt")),
        format!("hba_file = '{}'", hba.display()),
        "log_connections = on".into(),
    ];
    let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
    let pg = PgCluster::start(&[], &conf);
    pg.sql(
        "CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram-secret'; \
         CREATE ROLE pw_user LOGIN REPLICATION PASSWORD 'clear-secret'; \
         CREATE ROLE cert_user LOGIN REPLICATION; \
         CREATE ROLE pass_user LOGIN REPLICATION PASSWORD 'file-secret'",
    );
    TlsCluster {
        pg,
        certs,
        home: TempDir::new("conn-home"),
    }
}

#[test]
fn tls_authentication_and_password_file() {
    let c = tls_cluster();
    let port = c.pg.port;
    let ca = c.path("ca.crt");
    let other_ca = c.path("other_ca.crt");

    // verify-full by name (hostaddr connects, host is checked) and by IP address, with
    // SCRAM-SHA-256-PLUS: channel_binding=require fails unless the binding was used.
    let full = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user=scram_user sslmode=verify-full sslrootcert={ca} channel_binding=require"
    );
    let out = c.probe_ok(&full, &[("PGPASSWORD", "scram-secret")]);
    assert!(out.contains("authentication SCRAM-SHA-256-PLUS"), "{out}");
    assert!(out.contains("TLSv1_3") || out.contains("TLSv1.3"), "{out}");
    assert!(out.contains("server: PostgreSQL 15"), "{out}");
    let out = c.probe_ok(
        &format!("host=127.0.0.1 port={port} user=postgres sslmode=verify-full"),
        &[("PGSSLROOTCERT", &ca)],
    );
    assert!(out.contains("authentication none"), "{out}");
    // A wrong SCRAM password still fails (the binding is no bypass).
    let err = c.probe_err(&full, &[("PGPASSWORD", "wrong")]);
    assert!(err.contains("28P01"), "{err}");

    // A certificate for another name: verify-full refuses it, verify-ca accepts it.
    let wrong_name =
        format!("host=wrong.example hostaddr=127.0.0.1 port={port} user=postgres sslrootcert={ca}");
    let err = c.probe_err(&format!("{wrong_name} sslmode=verify-full"), &[]);
    assert!(
        err.contains("TLS handshake") && err.contains("wrong.example"),
        "{err}"
    );
    c.probe_ok(&format!("{wrong_name} sslmode=verify-ca"), &[]);

    // A certificate from another CA: refused by verify-ca, and by require once a root
    // certificate file exists (libpq then behaves as verify-ca); require without one
    // encrypts without checking.
    let err = c.probe_err(
        &format!("host=localhost hostaddr=127.0.0.1 port={port} user=postgres sslmode=verify-ca sslrootcert={other_ca}"),
        &[],
    );
    assert!(err.contains("invalid peer certificate"), "{err}");
    let err = c.probe_err(
        &format!("host=127.0.0.1 port={port} user=postgres sslmode=require sslrootcert={other_ca}"),
        &[],
    );
    assert!(err.contains("invalid peer certificate"), "{err}");
    let out = c.probe_ok(
        &format!("host=127.0.0.1 port={port} user=postgres sslmode=require"),
        &[],
    );
    assert!(out.contains("TLS"), "{out}");
    // verify-full without any root certificate: an error naming the fix.
    let err = c.probe_err(
        &format!("host=127.0.0.1 port={port} user=postgres sslmode=verify-full"),
        &[],
    );
    assert!(
        err.contains("root.crt") && err.contains("does not exist"),
        "{err}"
    );

    // sslrootcert=system: the system's roots (SSL_CERT_FILE, as for OpenSSL), verify-full
    // only.
    let system =
        format!("host=localhost hostaddr=127.0.0.1 port={port} user=postgres sslrootcert=system");
    c.probe_ok(
        &format!("{system} sslmode=verify-full"),
        &[("SSL_CERT_FILE", &ca)],
    );
    let err = c.probe_err(
        &format!("{system} sslmode=verify-full"),
        &[("SSL_CERT_FILE", &other_ca)],
    );
    assert!(err.contains("invalid peer certificate"), "{err}");
    let err = c.probe_err(&format!("{system} sslmode=require"), &[]);
    assert!(err.contains("needs sslmode=verify-full"), "{err}");

    // Client certificate authentication (pg_hba `cert`), and libpq's key permission check.
    let cert = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user=cert_user sslmode=verify-full sslrootcert={ca} sslcert={} sslkey={}",
        c.path("client.crt"),
        c.path("client.key")
    );
    let out = c.probe_ok(&cert, &[]);
    assert!(out.contains("authentication none"), "{out}");
    let open_key = c.certs.path().join("client-open.key");
    std::fs::copy(c.certs.path().join("client.key"), &open_key).expect("copy key");
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = c.probe_err(
        &cert.replace(&c.path("client.key"), &open_key.display().to_string()),
        &[],
    );
    assert!(err.contains("group or world access"), "{err}");

    // A cleartext password request over plain TCP is refused by default, with the fix;
    // require_auth=password allows it; over TLS (sslmode=prefer) it is allowed.
    let plain_pw = format!("host=127.0.0.1 port={port} user=pw_user sslmode=disable");
    let err = c.probe_err(&plain_pw, &[("PGPASSWORD", "clear-secret")]);
    assert!(
        err.contains("cleartext") && err.contains("require_auth=password"),
        "{err}"
    );
    assert!(!err.contains("clear-secret"), "{err}");
    let out = c.probe_ok(
        &format!("{plain_pw} require_auth=password"),
        &[("PGPASSWORD", "clear-secret")],
    );
    assert!(out.contains("no TLS, authentication password"), "{out}");
    let out = c.probe_ok(
        &format!("host=127.0.0.1 port={port} user=pw_user"),
        &[("PGPASSWORD", "clear-secret")],
    );
    assert!(
        out.contains("authentication password") && !out.contains("no TLS"),
        "{out}"
    );
    // require_auth=scram-sha-256 refuses that server even over TLS.
    let err = c.probe_err(
        &format!("host=127.0.0.1 port={port} user=pw_user require_auth=scram-sha-256"),
        &[("PGPASSWORD", "clear-secret")],
    );
    assert!(
        err.contains("server requested a cleartext password"),
        "{err}"
    );
    // channel_binding=require without TLS.
    let err = c.probe_err(
        &format!(
            "host=127.0.0.1 port={port} user=pass_user sslmode=disable channel_binding=require"
        ),
        &[("PGPASSWORD", "file-secret")],
    );
    assert!(err.contains("channel binding is required"), "{err}");

    // Unix-domain socket: no TLS, peer-local trust.
    let out = c.probe_ok(
        &format!("host={} port={port} user=postgres", c.pg.root.display()),
        &[],
    );
    assert!(out.contains("no TLS"), "{out}");

    // The password file, named by PGPASSFILE: used at 0600, ignored with libpq's warning
    // at 0644.
    let passfile = c.home.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "# host:port:database:user:password\n\
             127.0.0.1:{port}:replication:scram_user:wrong\n\
             127.0.0.1:{port}:*:pass_user:file-secret\n"
        ),
    )
    .expect("pgpass");
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let pass = format!("host=127.0.0.1 port={port} user=pass_user");
    let passfile_s = passfile.display().to_string();
    let out = c.probe_ok(&pass, &[("PGPASSFILE", &passfile_s)]);
    assert!(out.contains("authentication SCRAM-SHA-256"), "{out}");
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = c.probe_err(&pass, &[("PGPASSFILE", &passfile_s)]);
    assert!(
        err.contains("has group or world access")
            && err.contains("0600")
            && err.contains("ignored"),
        "{err}"
    );
    assert!(!err.contains("file-secret"), "{err}");

    // A password on the command line works, with a warning about `ps`.
    let (ok, _, err) = c.probe(&format!("{pass} password=file-secret"), &[]);
    assert!(ok && err.contains("ps"), "{err}");

    // A parse error never echoes the password, even a mangled one.
    let err = c.probe_err(&format!("{pass} password=file secret"), &[]);
    assert!(!err.contains("secret") && !err.contains("file"), "{err}");
}

#[test]
fn connect_timeout_bounds_a_silent_server() {
    // A listener that accepts (in the backlog) and never answers the SSLRequest.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let started = Instant::now();
    let out = Command::new(HELPER_BIN)
        .args([
            "probe",
            "--connect",
            &format!("host=127.0.0.1 port={port} connect_timeout=2"),
        ])
        .output()
        .expect("probe");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("timed out after 2s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(listener);
}

/// `redo-helper run` over verify-full TLS with SCRAM-SHA-256-PLUS: it bootstraps and
/// streams, the server sees an SSL walsender, and when the role loses REPLICATION the
/// helper stops with the SQL that drops its slot.
#[test]
fn helper_streams_over_verified_tls_with_channel_binding() {
    let c = tls_cluster();
    let dir = TempDir::new("conn-run");
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=scram_user sslmode=verify-full sslrootcert={} channel_binding=require",
        c.pg.port,
        c.path("ca.crt")
    );
    let home = c.home.path().display().to_string();
    let mut h = HelperProcess::spawn_with_env(
        &conninfo,
        &dir.path().join("data"),
        &dir.path().join("helper.log"),
        &[],
        &[("PGPASSWORD", "scram-secret"), ("HOME", &home)],
    );
    h.wait_status("streaming over TLS", Duration::from_secs(90), |s| {
        s["state"] == "streaming"
    });
    // WAL written now arrives through the TLS stream (including the reads that bypass the
    // runtime, decrypted by hand) and is decoded.
    c.pg.sql(
        "CREATE TABLE t AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 50000) g",
    );
    let target = lsn(&c.pg.sql("SELECT pg_current_wal_insert_lsn()"));
    h.wait_status("WAL over TLS", Duration::from_secs(60), |s| {
        status_lsn(s, "flush_lsn") >= target && status_lsn(s, "decoded_lsn") >= target
    });
    let log = h.log_text();
    assert!(log.contains("authentication SCRAM-SHA-256-PLUS"), "{log}");
    assert!(!log.contains("scram-secret"), "{log}");
    let ssl = c.pg.sql(
        "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.usename = 'scram_user'",
    );
    assert_eq!(ssl, "t");
    c.pg.sql("ALTER ROLE scram_user NOREPLICATION");
    c.pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication");
    let (code, log) = h.wait_exit_code(Duration::from_secs(60));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("SELECT pg_drop_replication_slot('fpw_pushdown');"),
        "{log}"
    );
}
