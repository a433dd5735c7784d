//! Throwaway PostgreSQL clusters for integration tests: 15 from Debian's packages, 16 to 18
//! from `/opt/fpw_pushdown/pg/<major>` (installed by `scripts/pg-versions.sh`; servers only:
//! Debian's psql and pgbench 15 are their clients).
//!
//! Each cluster lives in its own temporary directory owned by `postgres`, listens only on a
//! Unix socket in that directory, and is stopped and removed by `Drop` (also when a test
//! panics). Run as root, commands are executed through `runuser -u postgres` because
//! PostgreSQL refuses to run as root.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

pub const PGBIN: &str = "/usr/lib/postgresql/15/bin";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Where `scripts/pg-versions.sh` puts the servers of PostgreSQL 16 to 18.
pub const PG_VERSIONS_ROOT: &str = "/opt/fpw_pushdown/pg";

/// Builds a command for a server program (initdb, pg_ctl, postgres) of PostgreSQL `major`,
/// as `postgres` when we are root. 15 is Debian's; the others are found under
/// [`PG_VERSIONS_ROOT`] and run with their own libraries.
pub fn server_command(major: u32, bin: &str) -> Command {
    if major == 15 {
        return pg_command(bin);
    }
    let root = format!("{PG_VERSIONS_ROOT}/{major}");
    let path = format!("{root}/bin/{bin}");
    let lib = format!("LD_LIBRARY_PATH={root}/lib");
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "env", &lib, &path]);
        c
    } else {
        let mut c = Command::new(path);
        c.env("LD_LIBRARY_PATH", format!("{root}/lib"));
        c
    }
}

/// Whether the server of PostgreSQL `major` is installed here.
pub fn server_installed(major: u32) -> bool {
    major == 15 || Path::new(&format!("{PG_VERSIONS_ROOT}/{major}/bin/postgres")).exists()
}

/// Builds a command for a PostgreSQL binary, as `postgres` when we are root.
pub fn pg_command(bin: &str) -> Command {
    let path = format!("{PGBIN}/{bin}");
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A free loopback port, never one this process has handed out before: every area's tests
/// run as threads of one process, so clusters and helpers started at the same time must not
/// be given the same port between our probe and their bind.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        if given.insert(port) {
            return port;
        }
    }
    panic!("no unused loopback port");
}

pub struct PgCluster {
    pub root: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    /// PostgreSQL major version of the server programs.
    pub major: u32,
    /// The network namespace its postmaster runs in (`netns`), None for this host's.
    pub netns: Option<String>,
    running: bool,
}

impl PgCluster {
    /// `initdb` (with `extra_initdb` args) and start with extra `postgresql.conf` lines.
    pub fn start(extra_initdb: &[&str], conf: &[&str]) -> PgCluster {
        PgCluster::start_version(15, extra_initdb, conf)
    }

    /// [`PgCluster::start`] with the server programs of PostgreSQL `major`.
    pub fn start_version(major: u32, extra_initdb: &[&str], conf: &[&str]) -> PgCluster {
        PgCluster::start_full(major, None, extra_initdb, conf, &[])
    }

    /// A PostgreSQL 15 cluster whose postmaster runs in the network namespace `netns` (its
    /// TCP listener on that namespace's addresses; psql and pgbench still reach it through
    /// its Unix socket, which no network namespace confines), with `hba` lines added on top
    /// of pg_hba.conf.
    pub fn start_in_netns(
        netns: &str,
        extra_initdb: &[&str],
        conf: &[&str],
        hba: &[&str],
    ) -> PgCluster {
        PgCluster::start_full(15, Some(netns.to_string()), extra_initdb, conf, hba)
    }

    fn start_full(
        major: u32,
        netns: Option<String>,
        extra_initdb: &[&str],
        conf: &[&str],
        hba: &[&str],
    ) -> PgCluster {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root =
            std::env::temp_dir().join(format!("redo-helper-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create temp dir");
        if is_root() {
            check(
                Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(&root)
                    .output()
                    .expect("chown"),
                "chown",
            );
        }
        let data = root.join("data");
        let mut cluster = PgCluster {
            root: root.clone(),
            data: data.clone(),
            port: free_port(),
            major,
            netns,
            running: false,
        };
        check(
            server_command(major, "initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data)
                .args(extra_initdb)
                .output()
                .expect("initdb"),
            "initdb",
        );
        let mut c = format!(
            "listen_addresses = ''\nunix_socket_directories = '{}'\nport = {}\nfsync = off\n\
             max_wal_size = 4GB\nwal_keep_size = 4GB\nlog_min_messages = warning\n",
            root.display(),
            cluster.port
        );
        for l in conf {
            c.push_str(l);
            c.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        existing.push_str(&c);
        std::fs::write(&conf_path, existing).expect("write postgresql.conf");
        if !hba.is_empty() {
            let hba_path = data.join("pg_hba.conf");
            let existing = std::fs::read_to_string(&hba_path).expect("read pg_hba.conf");
            std::fs::write(&hba_path, format!("{}\n{existing}", hba.join("\n")))
                .expect("write pg_hba.conf");
        }
        check(
            cluster
                .postmaster_command("pg_ctl")
                .args(["-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(root.join("log"))
                .arg("start")
                .output()
                .expect("pg_ctl start"),
            "pg_ctl start",
        );
        cluster.running = true;
        cluster
    }

    /// A cluster the helper can follow with full_page_writes off (the mode it serves):
    /// loopback TCP, replication, no autovacuum or timed checkpoint in the way.
    pub fn start_fpw_off(extra_initdb: &[&str]) -> PgCluster {
        PgCluster::start_fpw_off_version(15, extra_initdb)
    }

    /// [`PgCluster::start_fpw_off`] with the server programs of PostgreSQL `major`.
    pub fn start_fpw_off_version(major: u32, extra_initdb: &[&str]) -> PgCluster {
        PgCluster::start_version(
            major,
            extra_initdb,
            &[
                "listen_addresses = '127.0.0.1'",
                "wal_level = replica",
                "max_wal_senders = 10",
                "autovacuum = off",
                "full_page_writes = off",
                "checkpoint_timeout = 1h",
            ],
        )
    }

    /// A server program that starts the postmaster (`pg_ctl start`): run inside the
    /// cluster's network namespace when it has one. (Stopping needs none: pg_ctl signals the
    /// postmaster's PID.)
    fn postmaster_command(&self, bin: &str) -> Command {
        let inner = server_command(self.major, bin);
        let Some(ns) = &self.netns else {
            return inner;
        };
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(inner.get_program())
            .args(inner.get_args());
        c
    }

    /// Connection string of the cluster's loopback TCP listener (for `redo-helper run`).
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.data.join("pg_wal")
    }

    /// Runs one SQL string (one implicit transaction) and returns stdout; panics on error.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("{sql} failed:\n{e}"))
    }

    pub fn pgbench(&self, args: &[&str]) {
        check(
            pg_command("pgbench")
                .args(["-h"])
                .arg(&self.root)
                .args(["-p", &self.port.to_string()])
                .args(args)
                .arg("postgres")
                .output()
                .expect("pgbench"),
            "pgbench",
        );
    }

    /// Simulates a crash: `pg_ctl stop -m immediate` (no shutdown checkpoint; dirty buffers
    /// are lost, the next start runs crash recovery).
    pub fn crash(&mut self) {
        check(
            server_command(self.major, "pg_ctl")
                .args(["-w", "-m", "immediate", "-D"])
                .arg(&self.data)
                .arg("stop")
                .output()
                .expect("pg_ctl stop"),
            "pg_ctl stop -m immediate",
        );
        self.running = false;
    }

    /// Starts a stopped cluster; Err with the server log's tail when it does not come up
    /// (e.g. crash recovery fails).
    pub fn try_start(&mut self) -> Result<(), String> {
        let out = self
            .postmaster_command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(self.root.join("log"))
            .arg("start")
            .output()
            .expect("pg_ctl start");
        if out.status.success() {
            self.running = true;
            return Ok(());
        }
        let log = std::fs::read_to_string(self.root.join("log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        // pg_ctl's own refusals (e.g. an unreadable PID file) go to its stderr, not the log.
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }

    /// `spc/db/relfilenode` of a relation, as in the helper's `/page` paths.
    pub fn rel_path(&self, rel: &str) -> String {
        let row = self.sql(&format!(
            "SELECT CASE WHEN reltablespace = 0 THEN 1663 ELSE reltablespace END || '/' || \
             (SELECT oid FROM pg_database WHERE datname = current_database()) || '/' || \
             pg_relation_filenode('{rel}') FROM pg_class WHERE oid = '{rel}'::regclass"
        ));
        assert!(!row.is_empty(), "relation {rel} not found");
        row
    }

    /// Runs SQL, returning psql's error instead of panicking.
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        self.try_sql_in("postgres", sql)
    }

    /// Runs SQL in database `db` (one implicit transaction), returning psql's error.
    pub fn try_sql_in(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = pg_command("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-h",
            ])
            .arg(&self.root)
            .args(["-p", &self.port.to_string(), "-c", sql])
            .output()
            .expect("psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// A copy of this (stopped) cluster's data directory in a new root, on its own port and
    /// socket directory; not started.
    pub fn copy_stopped(&self) -> PgCluster {
        assert!(!self.running, "copy of a running cluster");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root =
            std::env::temp_dir().join(format!("redo-helper-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("create temp dir");
        let data = root.join("data");
        check(
            Command::new("cp")
                .arg("-a")
                .arg(&self.data)
                .arg(&data)
                .output()
                .expect("cp"),
            "cp -a",
        );
        if is_root() {
            check(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&root)
                    .output()
                    .expect("chown"),
                "chown",
            );
        }
        let port = free_port();
        let conf_path = data.join("postgresql.conf");
        let mut conf = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        conf.push_str(&format!(
            "port = {port}\nunix_socket_directories = '{}'\nlisten_addresses = ''\n",
            root.display()
        ));
        std::fs::write(&conf_path, conf).expect("write postgresql.conf");
        let _ = std::fs::remove_file(data.join("postmaster.pid"));
        PgCluster {
            root,
            data,
            port,
            major: self.major,
            netns: None,
            running: false,
        }
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = server_command(self.major, "pg_ctl")
                .args(["-w", "-m", "fast", "-D"])
                .arg(&self.data)
                .arg("stop")
                .output();
            self.running = false;
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = server_command(self.major, "pg_ctl")
                .args(["-w", "-m", "immediate", "-D"])
                .arg(&self.data)
                .arg("stop")
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A private temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("redo-helper-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs pg_waldump over `dir` from `start` with TZ=UTC; returns stdout lines and stderr.
pub fn pg_waldump(dir: &Path, args: &[&str]) -> (Vec<String>, String) {
    let out = Command::new(format!("{PGBIN}/pg_waldump"))
        .env("TZ", "UTC")
        .arg("-p")
        .arg(dir)
        .args(args)
        .output()
        .expect("pg_waldump");
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        stdout.lines().map(str::to_string).collect(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Real WAL for corruption and fuzz tests: the first two segments of a small cluster and the
/// second segment of another cluster (different system identifier).
pub struct WalFixture {
    pub seg1: Vec<u8>,
    pub seg2: Vec<u8>,
    pub other_seg2: Vec<u8>,
}

pub const SEG: usize = 16 * 1024 * 1024;

pub fn wal_fixture() -> &'static WalFixture {
    static FIXTURE: std::sync::OnceLock<WalFixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let read = |c: &PgCluster, name: &str| {
            std::fs::read(c.wal_dir().join(name)).expect("read segment")
        };
        let mut a = PgCluster::start(
            &[],
            &[
                "wal_compression = lz4",
                "wal_consistency_checking = 'heap,btree'",
            ],
        );
        a.pgbench(&["-q", "-i", "-s", "1"]);
        a.pgbench(&["-t", "300"]);
        a.sql("CHECKPOINT");
        a.stop();
        let seg1 = read(&a, "000000010000000000000001");
        let seg2 = read(&a, "000000010000000000000002");
        let mut b = PgCluster::start(&[], &[]);
        b.sql("SELECT pg_switch_wal()");
        b.sql("CREATE TABLE x AS SELECT g FROM generate_series(1, 1000) g");
        b.stop();
        let other_seg2 = read(&b, "000000010000000000000002");
        assert_eq!(seg1.len(), SEG);
        WalFixture {
            seg1,
            seg2,
            other_seg2,
        }
    })
}

/// pg_waldump's lines for the records of `rmgr` in every segment of a helper's WAL archive
/// `wal` (first to last segment file).
pub fn waldump_archive(wal: &Path, rmgr: &str) -> Vec<String> {
    let mut segments: Vec<String> = std::fs::read_dir(wal)
        .expect("helper WAL archive")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    segments.sort();
    let (Some(first), Some(last)) = (segments.first(), segments.last()) else {
        panic!("no segments in {}", wal.display());
    };
    pg_waldump(wal, &["-r", rmgr, first, last]).0
}
