//! Deployments across hosts (issue 19), each host a network namespace of its own
//! ([`crate::netns`]): PostgreSQL on host `pg` (10.231.0.1, TLS, SCRAM from the other hosts'
//! addresses only), SeaweedFS's S3 gateway on host `s3` (10.231.0.2, HTTPS with a private CA,
//! credentials), and helpers on the hosts after them, each with its API on TCP with TLS and
//! the deployment's one token. Nothing reaches another host except over the namespaces'
//! Ethernet. The tests: an unsharded helper replaced on another host; two shards routing
//! each other's pages, one replaced on a third host; a crash of the PostgreSQL host repaired
//! from the shards over their APIs (docs/testing.md).

use crate::common::{PgCluster, TempDir};
use crate::netns::{Host, Network, Pki};
use crate::seaweed::{BUCKET, KEY_ID, SECRET, free_port_range, script};
use crate::support::{Api, HELPER_BIN, HelperProcess, lsn, run_check_clean, status_lsn};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The helpers' API port (each host has its own namespace, so all use the same one).
const API_PORT: u16 = 8443;
/// The bucket prefix of the deployment.
const PREFIX: &str = "cluster1";
/// The test role's password (a throwaway cluster's).
const PG_PASSWORD: &str = "fpw-netns-test-8d1e";
/// Service addresses of shards 0 and 1: added to the host that runs the shard, moved with
/// it (the peers' URLs name these, not the hosts).
const SHARD_IPS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(10, 231, 0, 100),
    Ipv4Addr::new(10, 231, 0, 101),
];

/// SeaweedFS serving S3 over HTTPS on a host; killed on drop.
struct S3OnHost {
    dir: TempDir,
    ip: std::net::Ipv4Addr,
    port: u16,
}

impl S3OnHost {
    fn start(host: &Host, pki: &Pki) -> S3OnHost {
        let dir = TempDir::new("netns-seaweedfs");
        // Also on this host's loopback: weed names its gRPC sockets in /tmp by port.
        let port = free_port_range();
        let out = host
            .command("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .arg(port.to_string())
            .arg(BUCKET)
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_CA_BUNDLE", pki.ca())
            .env("SEAWEEDFS_IP", host.ip.to_string())
            .env("SEAWEEDFS_TLS_CERT", pki.cert())
            .env("SEAWEEDFS_TLS_KEY", pki.key())
            .output()
            .expect("seaweedfs.sh");
        assert!(
            out.status.success(),
            "seaweedfs.sh start on host {} failed: {}{}",
            host.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        S3OnHost {
            dir,
            ip: host.ip,
            port,
        }
    }

    /// The AWS environment of a client of this gateway.
    fn env(&self, pki: &Pki) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            (
                "AWS_ENDPOINT_URL",
                format!("https://{}:{}", self.ip, self.port),
            ),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_CA_BUNDLE", pki.ca().display().to_string()),
        ]
    }
}

impl Drop for S3OnHost {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("kill")
            .arg(self.dir.path())
            .status();
    }
}

/// PostgreSQL, SeaweedFS and the hosts for helpers. Fields drop in order: the servers
/// before the network they run in.
pub(crate) struct Site {
    s3: S3OnHost,
    pub pg: PgCluster,
    /// The helpers' data directories and logs, the passfile and the API header file.
    pub dir: TempDir,
    _pg_tls: TempDir,
    pub pki: Pki,
    pub net: Network,
}

impl Site {
    /// Hosts `pg`, `s3` and one per name of `helper_hosts`; None when network namespaces
    /// cannot be made here (the test then skips, with the reason printed).
    pub fn new(helper_hosts: &[&str]) -> Option<Site> {
        Site::with(helper_hosts, &[], &[])
    }

    /// [`Site::new`] with more initdb arguments and postgresql.conf lines.
    pub fn with(helper_hosts: &[&str], initdb: &[&str], conf: &[&str]) -> Option<Site> {
        let mut names = vec!["pg", "s3"];
        names.extend_from_slice(helper_hosts);
        let net = Network::new(&names)?;
        let mut ips: Vec<_> = net.hosts.iter().map(|h| h.ip).collect();
        ips.extend(SHARD_IPS);
        let pki = Pki::new(&ips);
        // PostgreSQL's own copy of the key: owned by postgres, 0600 (it refuses others).
        let pg_tls = TempDir::new("netns-pg-tls");
        let pg_key = pg_tls.path().join("server.key");
        std::fs::copy(pki.key(), &pg_key).expect("copy key");
        let chown = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&pg_key)
            .status()
            .expect("chown");
        assert!(chown.success());
        let pg_host = net.host("pg");
        let listen = format!("listen_addresses = '{}'", pg_host.ip);
        let cert = format!("ssl_cert_file = '{}'", pki.cert().display());
        let key = format!("ssl_key_file = '{}'", pg_key.display());
        let mut all_conf = vec![
            listen.as_str(),
            "wal_level = replica",
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "autovacuum = off",
            // Every replication command in the server log: BASE_BACKUPs are counted.
            "log_replication_commands = on",
            "ssl = on",
            cert.as_str(),
            key.as_str(),
            "password_encryption = 'scram-sha-256'",
        ];
        all_conf.extend_from_slice(conf);
        let pg = PgCluster::start_in_netns(
            &pg_host.netns,
            initdb,
            &all_conf,
            &[
                "hostssl replication postgres 10.231.0.0/24 scram-sha-256",
                "hostssl all postgres 10.231.0.0/24 scram-sha-256",
            ],
        );
        pg.sql(&format!("ALTER ROLE postgres PASSWORD '{PG_PASSWORD}'"));
        let dir = TempDir::new("netns-site");
        let passfile = dir.path().join("pgpass");
        std::fs::write(
            &passfile,
            format!("{}:{}:*:postgres:{PG_PASSWORD}\n", pg_host.ip, pg.port),
        )
        .expect("pgpass");
        std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600))
            .expect("chmod pgpass");
        // One API token for the deployment (the shards send it to each other); 256 random
        // bits as hex, 0600.
        let mut token = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").expect("urandom"),
            &mut token,
        )
        .expect("random token");
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let token_file = dir.path().join("api.token");
        std::fs::write(&token_file, format!("{token}\n")).expect("token file");
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod token file");
        let s3 = S3OnHost::start(net.host("s3"), &pki);
        Some(Site {
            s3,
            pg,
            dir,
            _pg_tls: pg_tls,
            pki,
            net,
        })
    }

    /// The helpers' connection string: TLS verified against the private CA, SCRAM with the
    /// password from a passfile (never on a command line).
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres passfile={} sslmode=verify-full sslrootcert={}",
            self.net.host("pg").ip,
            self.pg.port,
            self.dir.path().join("pgpass").display(),
            self.pki.ca().display()
        )
    }

    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `redo-helper run` on host `host` with data directory `name`, following the cluster
    /// through the bucket, its API on `https://HOST:8443` with the deployment's token.
    pub fn helper(&self, host: &str, name: &str, extra: &[&str]) -> HelperProcess {
        self.helper_at(host, self.net.host(host).ip, name, extra)
    }

    /// [`Site::helper`] with its API on `listen` (an address of the host).
    pub fn helper_at(
        &self,
        host: &str,
        listen: Ipv4Addr,
        name: &str,
        extra: &[&str],
    ) -> HelperProcess {
        let host = self.net.host(host);
        let token_file = self.dir.path().join("api.token");
        let data = self.data_dir(name);
        let log = self.dir.path().join(format!("{name}.log"));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("helper log");
        let child = host
            .command(HELPER_BIN)
            .args(["run", "--connect", &self.conninfo(), "--data-dir"])
            .arg(&data)
            .args([
                "--listen",
                &format!("{listen}:{API_PORT}"),
                "--api-token-file",
            ])
            .arg(&token_file)
            .arg("--tls-cert")
            .arg(self.pki.cert())
            .arg("--tls-key")
            .arg(self.pki.key())
            .args([
                "--max-backoff-secs",
                "2",
                "--object-store",
                &format!("s3://{BUCKET}/{PREFIX}"),
                "--object-store-interval-ms",
                "200",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(self.s3.env(&self.pki))
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn redo-helper in a namespace");
        HelperProcess {
            child,
            listen: Api {
                port: API_PORT,
                token_file,
                socket: data.join("api.sock"),
            },
            log,
        }
    }

    /// GET `path` of the helper API at `to` (port 8443) from host `from`, over TLS (verified
    /// against the private CA) with the token: (HTTP status, response headers, body).
    pub fn api_get(&self, from: &str, to: Ipv4Addr, path: &str) -> (u16, String, Vec<u8>) {
        let token = std::fs::read_to_string(self.dir.path().join("api.token")).expect("token file");
        // The token goes to curl in a 0600 file, not on its command line.
        let header_file = self.dir.path().join(format!("auth-{to}"));
        std::fs::write(
            &header_file,
            format!("Authorization: Bearer {}\n", token.trim()),
        )
        .expect("header file");
        std::fs::set_permissions(&header_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod header file");
        let head = self.dir.path().join(format!("head-{to}"));
        let out = self
            .net
            .host(from)
            .command("curl")
            .args(["-s", "--max-time", "20", "--cacert"])
            .arg(self.pki.ca())
            .arg("-H")
            .arg(format!("@{}", header_file.display()))
            .arg("-D")
            .arg(&head)
            .args(["-w", "%{http_code}", "-o", "-"])
            .arg(format!("https://{to}:{API_PORT}{path}"))
            .output()
            .expect("curl");
        let mut body = out.stdout;
        let code_at = body.len().saturating_sub(3);
        let code = String::from_utf8_lossy(&body[code_at..])
            .parse()
            .unwrap_or(0);
        body.truncate(code_at);
        let headers = std::fs::read_to_string(&head).unwrap_or_default();
        (code, headers, body)
    }

    /// BASE_BACKUP commands the server received so far (its log, `log_replication_commands`).
    pub fn base_backups(&self) -> usize {
        std::fs::read_to_string(self.pg.root.join("log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("received replication command: BASE_BACKUP"))
            .count()
    }

    /// Waits until a helper decoded everything the server flushed so far.
    pub fn wait_caught_up(&self, h: &mut HelperProcess, what: &str) -> serde_json::Value {
        let target = lsn(&self.pg.sql("SELECT pg_current_wal_flush_lsn()"));
        h.wait_status(what, Duration::from_secs(120), |s| {
            status_lsn(s, "flush_lsn") >= target && status_lsn(s, "decoded_lsn") >= target
        })
    }
}

fn remove_data_dir(path: &Path) {
    std::fs::remove_dir_all(path).expect("remove the data directory");
}

/// An unsharded helper on host `c` follows PostgreSQL on host `pg` with its state in the
/// bucket on host `s3`; it is killed under pgbench and its disk lost; a replacement on host
/// `d` resumes from the bucket: PostgreSQL runs no second BASE_BACKUP, and the pages it
/// serves equal the data files.
#[test]
fn a_replacement_on_another_host_resumes_from_the_bucket() {
    let Some(site) = Site::new(&["c", "d"]) else {
        return;
    };
    site.pg.pgbench(&["-i", "-s", "2", "-q"]);
    let mut c = site.helper("c", "helper-c", &[]);
    c.wait_status("bootstrap on host c", Duration::from_secs(120), |s| {
        s["state"] == "streaming"
    });
    assert!(c.log_text().contains("bootstrapping from BASE_BACKUP"));
    assert_eq!(site.base_backups(), 1, "the server log counts BASE_BACKUPs");
    // Its API across the network, TLS verified, with the token: from the PostgreSQL host.
    let (code, _, body) = site.api_get("pg", site.net.host("c").ip, "/status");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let st: serde_json::Value = serde_json::from_slice(&body).expect("status JSON");
    assert_eq!(st["state"], "streaming");

    // Host c dies under load and its disk is lost.
    std::thread::scope(|s| {
        let load = s.spawn(|| site.pg.pgbench(&["-n", "-T", "6", "-c", "2", "-j", "2"]));
        std::thread::sleep(Duration::from_secs(3));
        c.kill9();
        let _ = load.join();
    });
    remove_data_dir(&site.data_dir("helper-c"));

    // The replacement on host d, an empty disk.
    let mut d = site.helper("d", "helper-d", &[]);
    site.pg.pgbench(&["-n", "-T", "3", "-c", "2", "-j", "2"]);
    site.wait_caught_up(&mut d, "the replacement's catch-up");
    let text = d.log_text();
    assert!(text.contains("restored from object store"), "{text}");
    assert!(
        !text.contains("bootstrapping from BASE_BACKUP"),
        "the replacement bootstrapped:\n{text}"
    );
    assert_eq!(
        site.base_backups(),
        1,
        "PostgreSQL ran a second BASE_BACKUP"
    );
    // A page through the replacement's API, from the PostgreSQL host.
    let rel = site.pg.rel_path("pgbench_accounts");
    let (code, _, page) = site.api_get("pg", site.net.host("d").ip, &format!("/page/{rel}/main/1"));
    assert_eq!((code, page.len()), (200, 8192));

    // Nothing lost: after a checkpoint, every page it serves equals the data files.
    site.pg.sql("CHECKPOINT");
    site.wait_caught_up(&mut d, "the checkpoint");
    d.kill9();
    let check = run_check_clean(&site.data_dir("helper-d"), &site.pg.data, 100);
    println!("replacement on host d: {}", check.line);
}

/// Shard `i` of 2 on host `host`, its API on the shard's service address, with its own slot
/// and every shard's service URL as `--peers` (routing, verified TLS, the shared token).
fn helper_shard(site: &Site, host: &str, name: &str, i: usize) -> HelperProcess {
    let peers = SHARD_IPS
        .map(|ip| format!("https://{ip}:{API_PORT}"))
        .join(",");
    let ca = site.pki.ca().display().to_string();
    let shard = i.to_string();
    let slot = format!("fpw_pushdown_{i}");
    site.helper_at(
        host,
        SHARD_IPS[i],
        name,
        &[
            "--shards",
            "2",
            "--shard",
            &shard,
            "--slot",
            &slot,
            "--peers",
            &peers,
            "--peer-ca-file",
            &ca,
        ],
    )
}

/// Reads `blocks` of `rel` through shard `shard`'s address from host `pg`: every page is
/// served, by `shard` itself or proxied to its owner (`x-fpw-routed: proxied`, the owner's
/// `x-fpw-shard`). Returns the pages and how many were proxied.
fn read_through(site: &Site, shard: usize, rel: &str, blocks: &[u32]) -> (Vec<Vec<u8>>, u32) {
    let mut pages = Vec::new();
    let mut proxied = 0;
    for &blk in blocks {
        // No answer at all (code 0) right after a shard's service address moved to its
        // replacement: the other hosts' neighbour caches still name the old host for a
        // while. Retried for up to 30 s; any HTTP answer is final.
        let path = format!("/page/{rel}/main/{blk}");
        let mut answer = site.api_get("pg", SHARD_IPS[shard], &path);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while answer.0 == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(500));
            answer = site.api_get("pg", SHARD_IPS[shard], &path);
        }
        let (code, headers, body) = answer;
        assert_eq!(
            code,
            200,
            "block {blk} of {rel} through shard {shard}: {headers} {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(body.len(), 8192);
        let header = |name: &str| {
            headers.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let producer = header("x-fpw-shard").expect("x-fpw-shard");
        if header("x-fpw-routed").as_deref() == Some("proxied") {
            assert_eq!(producer, (1 - shard).to_string(), "{headers}");
            proxied += 1;
        } else {
            assert_eq!(producer, shard.to_string(), "{headers}");
        }
        pages.push(body);
    }
    (pages, proxied)
}

/// Two shards on hosts `c` and `d` follow PostgreSQL on host `pg` under pgbench, with one
/// BASE_BACKUP (shard 0's) between them, routing reads of each other's pages; shard 1 is
/// killed and its disk lost, its replacement on host `e` (taking over the shard's service
/// address) resumes from the bucket with no BASE_BACKUP; any page read through either shard
/// is the same page, and after a checkpoint every page either shard serves equals the data
/// files.
#[test]
fn two_shards_on_two_hosts_and_a_lost_shard_replaced_on_a_third() {
    let Some(site) = Site::new(&["c", "d", "e"]) else {
        return;
    };
    site.net.add_address("c", SHARD_IPS[0]);
    site.net.add_address("d", SHARD_IPS[1]);
    site.pg.pgbench(&["-i", "-s", "2", "-q"]);
    let mut s0 = helper_shard(&site, "c", "shard0", 0);
    let mut s1 = helper_shard(&site, "d", "shard1", 1);
    for (h, what) in [(&mut s0, "shard 0 on c"), (&mut s1, "shard 1 on d")] {
        h.wait_status(what, Duration::from_secs(150), |s| {
            s["state"] == "streaming"
        });
    }
    assert_eq!(site.base_backups(), 1, "one BASE_BACKUP for both shards");
    assert!(!s1.log_text().contains("bootstrapping from BASE_BACKUP"));
    let slots = site
        .pg
        .sql("SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots");
    assert_eq!(slots, "fpw_pushdown_0,fpw_pushdown_1");
    for (i, ip) in SHARD_IPS.into_iter().enumerate() {
        let (code, _, body) = site.api_get("pg", ip, "/status");
        assert_eq!(code, 200);
        let st: serde_json::Value = serde_json::from_slice(&body).expect("status JSON");
        assert_eq!(st["shard"]["shards"], 2, "{st}");
        assert_eq!(st["shard"]["shard"], i, "{st}");
    }

    // Under load, shard 1's host dies and its disk is lost; its replacement on host e takes
    // over the shard's service address.
    std::thread::scope(|s| {
        let load = s.spawn(|| site.pg.pgbench(&["-n", "-T", "6", "-c", "2", "-j", "2"]));
        std::thread::sleep(Duration::from_secs(3));
        s1.kill9();
        let _ = load.join();
    });
    remove_data_dir(&site.data_dir("shard1"));
    site.net.remove_address("d", SHARD_IPS[1]);
    site.net.add_address("e", SHARD_IPS[1]);
    let mut s1 = helper_shard(&site, "e", "shard1-e", 1);
    site.pg.pgbench(&["-n", "-T", "3", "-c", "2", "-j", "2"]);
    site.wait_caught_up(&mut s0, "shard 0's catch-up");
    site.wait_caught_up(&mut s1, "the replacement shard 1's catch-up");
    let text = s1.log_text();
    assert!(text.contains("from object store"), "{text}");
    assert!(!text.contains("bootstrapping from BASE_BACKUP"), "{text}");
    assert_eq!(
        site.base_backups(),
        1,
        "PostgreSQL ran a second BASE_BACKUP"
    );

    // The split and the routing, read over the network from the PostgreSQL host: 60 blocks
    // spread over the relation's stripes (128 blocks each by default), through each shard.
    let rel = site.pg.rel_path("pgbench_accounts");
    let blocks: u32 = site
        .pg
        .sql("SELECT pg_relation_size('pgbench_accounts') / 8192")
        .parse()
        .expect("blocks");
    let sample: Vec<u32> = (0..60).map(|i| i * blocks / 60).collect();
    let (via0, proxied0) = read_through(&site, 0, &rel, &sample);
    let (via1, proxied1) = read_through(&site, 1, &rel, &sample);
    println!(
        "pgbench_accounts, 60 of {blocks} blocks: shard 0 owns {}, shard 1 owns {}",
        60 - proxied0,
        proxied0
    );
    assert_eq!(proxied0 + proxied1, 60, "every page has one owner");
    assert!(proxied0 > 0 && proxied1 > 0, "both shards own pages");
    assert!(
        via0 == via1,
        "a page read through shard 0 differs from it through shard 1"
    );

    // Nothing lost: after a checkpoint every page each shard serves equals the data files.
    site.pg.sql("CHECKPOINT");
    site.wait_caught_up(&mut s0, "the checkpoint on shard 0");
    site.wait_caught_up(&mut s1, "the checkpoint on shard 1");
    s0.kill9();
    s1.kill9();
    let c0 = run_check_clean(&site.data_dir("shard0"), &site.pg.data, 100);
    let c1 = run_check_clean(&site.data_dir("shard1-e"), &site.pg.data, 100);
    println!("shard 0: {}\nshard 1: {}", c0.line, c1.line);
}

/// PostgreSQL's host crashes (full_page_writes off, data checksums) with torn pages while two
/// shards on hosts `c` and `d` follow it; they had stopped receiving a little before (the
/// tail is only in `pg_wal`). `redo-helper repair --helper` on the PostgreSQL host takes the
/// pages from both shards over their TLS APIs (no file of theirs on that host): the tables
/// then equal what they held before the crash (an untorn recovery's), amcheck is clean.
/// Without the repair the same crash does not recover intact (the test can fail).
#[test]
fn a_crash_of_the_postgresql_host_repaired_from_sharded_helpers() {
    let Some(mut site) = Site::with(
        &["c", "d"],
        &["-k"],
        &["full_page_writes = off", "checkpoint_timeout = 1h"],
    ) else {
        return;
    };
    site.net.add_address("c", SHARD_IPS[0]);
    site.net.add_address("d", SHARD_IPS[1]);
    site.pg.pgbench(&["-i", "-s", "1", "-q"]);
    site.pg.sql("CREATE EXTENSION amcheck");
    site.pg.sql(
        "CREATE TABLE quiet (id int PRIMARY KEY, v text); \
         INSERT INTO quiet SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 2000) g",
    );
    let mut s0 = helper_shard(&site, "c", "shard0", 0);
    let mut s1 = helper_shard(&site, "d", "shard1", 1);
    for (h, what) in [(&mut s0, "shard 0 on c"), (&mut s1, "shard 1 on d")] {
        h.wait_status(what, Duration::from_secs(150), |s| {
            s["state"] == "streaming"
        });
    }
    crate::remote_repair::checkpoint_and_work(&site.pg);
    site.wait_caught_up(&mut s0, "shard 0's catch-up");
    site.wait_caught_up(&mut s1, "shard 1's catch-up");
    // The shards stop receiving; the work after this is only in pg_wal; the host crashes.
    crate::remote_repair::signal(&s0, "-STOP");
    crate::remote_repair::signal(&s1, "-STOP");
    let digest = crate::remote_repair::work_crash_and_tear(&mut site.pg);
    crate::remote_repair::signal(&s0, "-CONT");
    crate::remote_repair::signal(&s1, "-CONT");

    // Control: without the repair the crash does not come back intact.
    let mut control = site.pg.copy_stopped();
    let outcome = crate::repair::recovers_intact(&mut control, &digest);
    control.stop();
    assert!(
        outcome.is_err(),
        "the torn pages did not matter without repair: the test cannot fail"
    );
    drop(control);

    // The repair runs on the PostgreSQL host, reaching the shards over the network.
    let helpers = SHARD_IPS
        .map(|ip| format!("https://{ip}:{API_PORT}"))
        .join(",");
    let out = site
        .net
        .host("pg")
        .command(HELPER_BIN)
        .args(["repair", "--helper", &helpers, "--pgdata"])
        .arg(&site.pg.data)
        .arg("--helper-token-file")
        .arg(site.dir.path().join("api.token"))
        .arg("--helper-ca-file")
        .arg(site.pki.ca())
        .output()
        .expect("redo-helper repair");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    crate::remote_repair::assert_repaired(
        &mut site.pg,
        &digest,
        out.status.code(),
        &stdout,
        &stderr,
    );
    println!("{}", stdout.lines().last().unwrap_or_default());
}
