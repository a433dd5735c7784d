//! Routing between helper shards (`run --peers`): two shards over one SeaweedFS bucket follow
//! one PostgreSQL 15 cluster under pgbench, each told the other's API address. Through either
//! helper every page of the pgbench tables equals the data files after CHECKPOINT (heap
//! masking), and every page of the primary key is served through both; a read of the other
//! shard's page comes back proxied (`x-fpw-routed: proxied`,
//! the owner's `x-fpw-shard`) and byte-identical to the owner's own answer; `route=redirect`
//! answers 307 to the owner; a request already routed once is answered 421 and never
//! forwarded again (no loop); with the owner killed, the other helper answers 502 naming the
//! shard and its address. Also prints GetPage latency local vs routed (client side, loopback).

use crate::common::{PgCluster, TempDir, free_port};
use crate::dbase::masked_heap_page;
use crate::seaweed::{BUCKET, SeaweedFs};
use crate::support::{HelperProcess, HttpReply, http, http_raw, lsn, status_lsn};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// One shard of two, listening on `ports[shard]`, with the other as its peer and the shared
/// token file; with `config`, `--peers` comes from that file instead (SIGHUP re-reads it).
#[allow(clippy::too_many_arguments)]
fn spawn_routed_shard(
    c: &PgCluster,
    sw: &SeaweedFs,
    shard: u32,
    ports: [u16; 2],
    token: &Path,
    data: &Path,
    log: &Path,
    config: Option<&Path>,
) -> HelperProcess {
    let env = sw.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let peers = format!(
        "http://127.0.0.1:{},http://127.0.0.1:{}",
        ports[0], ports[1]
    );
    let token = token.to_str().expect("token path");
    let (peers_flag, peers_value) = match config {
        Some(file) => ("--config", file.to_str().expect("config path").to_string()),
        None => ("--peers", peers),
    };
    let mut h = HelperProcess::spawn_on_port(
        ports[shard as usize],
        &c.conninfo(),
        data,
        log,
        &[
            "--object-store",
            &format!("s3://{BUCKET}/routed"),
            "--object-store-interval-ms",
            "200",
            "--shards",
            "2",
            "--shard",
            &shard.to_string(),
            "--stripe-blocks",
            "8",
            "--slot",
            &format!("fpw_pushdown_{shard}"),
            "--api-token-file",
            token,
            peers_flag,
            &peers_value,
        ],
        &env,
    );
    h.listen.token_file = token.into();
    h
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Shards 1 and 0 (in `dir/shard1`, `dir/shard0`), each other's peers, both streaming;
/// `config0`: shard 0's `--peers` from that file.
fn spawn_streaming_pair(
    c: &PgCluster,
    sw: &SeaweedFs,
    ports: [u16; 2],
    token: &Path,
    dir: &TempDir,
    config0: Option<&Path>,
) -> [HelperProcess; 2] {
    let shard = |n: u32, config: Option<&Path>| {
        spawn_routed_shard(
            c,
            sw,
            n,
            ports,
            token,
            &dir.path().join(format!("shard{n}")),
            &dir.path().join(format!("{n}.log")),
            config,
        )
    };
    let mut s1 = shard(1, None);
    let mut s0 = shard(0, config0);
    for h in [&mut s0, &mut s1] {
        h.wait_status("streaming", Duration::from_secs(120), |s| {
            s["state"] == "streaming"
        });
    }
    [s0, s1]
}

/// A cluster with pgbench's tables for the routing tests.
fn routing_cluster() -> PgCluster {
    let c = PgCluster::start(
        &[],
        &[
            "listen_addresses = '127.0.0.1'",
            "wal_level = replica",
            "max_wal_senders = 10",
            "autovacuum = off",
        ],
    );
    c.pgbench(&["-i", "-s", "1", "-q"]);
    c
}

/// The token file both shards use, API and peers alike.
fn shared_token(dir: &TempDir) -> std::path::PathBuf {
    use std::io::Write;
    let token = dir.path().join("peer.token");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&token)
        .expect("token file");
    writeln!(f, "routing-test-token-0123456789abcdef0123456789").expect("token");
    token
}

#[test]
fn any_shard_answers_any_page_routed_to_its_owner() {
    let c = routing_cluster();
    let sw = SeaweedFs::start();
    let dir = TempDir::new("routing");
    let token = shared_token(&dir);
    let ports = [free_port(), free_port()];
    assert_ne!(ports[0], ports[1]);
    let [mut s0, mut s1] = spawn_streaming_pair(&c, &sw, ports, &token, &dir, None);
    c.pgbench(&["-n", "-T", "3", "-c", "2", "-j", "2"]);
    c.sql("CHECKPOINT");
    let target = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    for h in [&mut s0, &mut s1] {
        h.wait_status("checkpoint decoded", Duration::from_secs(90), |s| {
            status_lsn(s, "decoded_lsn") >= target
        });
    }

    // Every page of the pgbench tables, through both helpers.
    let helpers = [&s0, &s1];
    let mut routed = [0u64; 2];
    // (page path, owner) of some pages of each shard, for the latency comparison.
    let mut sample: Vec<(String, usize)> = Vec::new();
    // Heap pages are compared with the data file here (heap masking); the primary key's
    // btree pages only between the two helpers (the shards test's `check` compares every
    // page kind with its own masking).
    for (rel, heap) in [
        ("pgbench_accounts", true),
        ("pgbench_branches", true),
        ("pgbench_tellers", true),
        ("pgbench_history", true),
        ("pgbench_accounts_pkey", false),
    ] {
        let relpath = c.sql(&format!("SELECT pg_relation_filepath('{rel}')"));
        let relpath = relpath.trim();
        let mut parts = relpath.trim_start_matches("base/").split('/');
        let (db, relnode) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let blocks: u64 = c
            .sql(&format!("SELECT pg_relation_size('{rel}') / 8192"))
            .trim()
            .parse()
            .expect("relation size");
        assert!(blocks > 0, "{rel}");
        // The relation's first segment file (the pgbench tables are far below 1 GB).
        let file = std::fs::read(c.data.join(relpath)).expect("relation file");
        for blk in 0..blocks {
            let page = format!("/page/1663/{db}/{relnode}/main/{blk}");
            let replies: Vec<HttpReply> = helpers
                .iter()
                .map(|h| http(&h.listen, "GET", &page).expect("helper answers"))
                .collect();
            let at = blk as usize * 8192;
            // A page heap extension added without WAL (PostgreSQL extends a contended
            // relation by several blocks at once, `RelationAddExtraBlocks`) and nothing has
            // used yet: all zeros in the file, and no record names it, so the helper may not
            // know it (404).
            if file[at..at + 8192].iter().all(|&b| b == 0) {
                for (i, r) in replies.iter().enumerate() {
                    assert!(
                        r.status == 404 || r.status == 200,
                        "{rel} block {blk} (never written) via shard {i}: {}",
                        r.headers
                    );
                }
                continue;
            }
            let expected = masked_heap_page(&file[at..at + 8192]);
            let mut owner = None;
            for (i, r) in replies.iter().enumerate() {
                assert_eq!(
                    r.status, 200,
                    "{rel} block {blk} via shard {i}: {}",
                    r.headers
                );
                assert!(
                    !heap || masked_heap_page(&r.body) == expected,
                    "{rel} block {blk} via shard {i}: differs from the data file"
                );
                let shard: usize = r
                    .header("x-fpw-shard")
                    .and_then(|s| s.parse().ok())
                    .expect("x-fpw-shard");
                match r.header("x-fpw-routed") {
                    Some("proxied") => {
                        assert_ne!(shard, i, "proxied from itself");
                        routed[i] += 1;
                    }
                    None => assert_eq!(shard, i, "served locally by another shard?"),
                    Some(other) => panic!("x-fpw-routed: {other}"),
                }
                assert!(owner.is_none_or(|o| o == shard), "two owners");
                owner = Some(shard);
            }
            // Exactly one of the two reads was proxied, and it carries the owner's bytes.
            assert_eq!(
                replies
                    .iter()
                    .filter(|r| r.header("x-fpw-routed").is_some())
                    .count(),
                1
            );
            assert_eq!(replies[0].body, replies[1].body, "{rel} block {blk}");
            let owner = owner.expect("owner");
            if sample.iter().filter(|(_, o)| *o == owner).count() < 150 {
                sample.push((page, owner));
            }
        }
    }
    println!(
        "reads proxied: by shard 0 {}, by shard 1 {}",
        routed[0], routed[1]
    );
    assert!(routed[0] > 0 && routed[1] > 0, "{routed:?}");
    let metrics = s0.metrics().expect("metrics");
    let proxied_metric = metrics
        .lines()
        .find(|l| l.starts_with("redo_helper_routed_reads_total{outcome=\"proxied\"}"))
        .expect("routed reads metric");
    assert!(
        proxied_metric.ends_with(&format!(" {}", routed[0])),
        "{proxied_metric}"
    );
    assert!(metrics.contains("redo_helper_routed_read_duration_seconds_count"));

    // GetPage latency through the owner (local) and through the other shard (routed), as the
    // client sees it (a new loopback TCP connection per read, warm page cache).
    let mut local = Vec::new();
    let mut via_peer = Vec::new();
    for _round in 0..2 {
        for (page, owner) in &sample {
            for (h, into) in [
                (helpers[*owner], &mut local),
                (helpers[1 - *owner], &mut via_peer),
            ] {
                let t = Instant::now();
                let r = http(&h.listen, "GET", page).expect("read");
                into.push(t.elapsed());
                assert_eq!(r.status, 200);
            }
        }
    }
    local.sort_unstable();
    via_peer.sort_unstable();
    println!(
        "GetPage over loopback HTTP, {} reads each (busy shared 2-core machine, debug build): local p50 {:.0} us p99 {:.0} us; routed p50 {:.0} us p99 {:.0} us",
        local.len(),
        percentile(&local, 0.5),
        percentile(&local, 0.99),
        percentile(&via_peer, 0.5),
        percentile(&via_peer, 0.99)
    );

    // A page shard 1 owns, asked of shard 0.
    let (theirs, _) = sample
        .iter()
        .find(|(_, o)| *o == 1)
        .expect("a page of shard 1")
        .clone();
    // Redirect: 307 to the owner's URL, query kept, route= dropped.
    let r = http(
        &s0.listen,
        "GET",
        &format!("{theirs}?wait_ms=100&route=redirect"),
    )
    .expect("redirect");
    assert_eq!(r.status, 307, "{}", r.headers);
    assert_eq!(
        r.header("location"),
        Some(format!("http://127.0.0.1:{}{theirs}?wait_ms=100", ports[1]).as_str())
    );
    // Already routed once: never forwarded again, the store's 421 names the owner.
    let auth = format!(
        "Host: localhost\r\nAuthorization: Bearer {}\r\nx-fpw-routed: proxied\r\n",
        s0.listen.token().expect("token")
    );
    let r = http_raw(ports[0], "GET", &theirs, &auth).expect("routed request");
    assert_eq!(r.status, 421, "{}", r.headers);
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("421 JSON");
    assert_eq!(body["owner"], 1, "{body}");
    // route=none: the store answers, 421.
    let r = http(&s0.listen, "GET", &format!("{theirs}?route=none")).expect("route=none");
    assert_eq!(r.status, 421);

    // The owner is down: 502 naming shard 1 and its address, never a page.
    s1.kill9();
    let r = http(&s0.listen, "GET", &theirs).expect("502");
    assert_eq!(r.status, 502, "{}", r.headers);
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("502 JSON");
    assert_eq!(body["owner"], 1, "{body}");
    let msg = body["error"].as_str().unwrap_or("");
    assert!(
        msg.contains(&format!("shard 1 at http://127.0.0.1:{}", ports[1])),
        "{msg}"
    );
    assert!(
        !s0.log_text().contains("routing-test-token"),
        "token in the log"
    );
    // Its own pages are still served.
    let (mine, _) = sample
        .iter()
        .find(|(_, o)| *o == 0)
        .expect("a page of shard 0");
    assert_eq!(http(&s0.listen, "GET", mine).expect("local").status, 200);
}

/// `curl` over TLS with the CA and the token: (status, header block, body).
fn curl_tls(ca: &Path, token: &str, url: &str) -> (u16, String, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-D", "-", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {token}"), url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Peers over TLS, before any PostgreSQL or bucket is reachable (routing needs neither: the
/// owner of a page is the shard map's): shard 0 trusts the CA that signed shard 1's
/// certificate and gets shard 1's own answer (503, still bootstrapping) proxied back; shard 1
/// is given another CA and answers 502 naming shard 0 and the certificate failure. Plain
/// http to a peer off loopback and a peer list of the wrong length are refused at start.
#[test]
fn tls_peers_are_verified_and_plain_http_off_loopback_refused() {
    use crate::conn_security::{make_ca, make_cert};
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("routing-tls");
    let d = tmp.path();
    make_ca(d, "ca");
    make_ca(d, "other_ca");
    make_cert(
        d,
        "ca",
        "server",
        "localhost",
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    let key = d.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let token = d.join("peer.token");
    std::fs::write(&token, "routing-tls-token-0123456789abcdef0123456789\n").expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let ports = [free_port(), free_port()];
    let peers = format!(
        "https://127.0.0.1:{},https://127.0.0.1:{}",
        ports[0], ports[1]
    );
    // Nothing listens on port 1: the helpers retry their start while the API serves.
    let env = [
        ("AWS_ACCESS_KEY_ID", "k"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
        ("AWS_REGION", "us-east-1"),
    ];
    let spawn = |shard: usize, peer_ca: &str| {
        HelperProcess::spawn_on_port(
            ports[shard],
            "host=127.0.0.1 port=1",
            &d.join(format!("shard{shard}")),
            &d.join(format!("{shard}.log")),
            &[
                "--object-store",
                "s3://fpw/tls",
                "--shards",
                "2",
                "--shard",
                &shard.to_string(),
                "--stripe-blocks",
                "1",
                "--api-token-file",
                token.to_str().expect("path"),
                "--tls-cert",
                d.join("server.crt").to_str().expect("path"),
                "--tls-key",
                key.to_str().expect("path"),
                "--peers",
                &peers,
                "--peer-ca-file",
                d.join(peer_ca).to_str().expect("path"),
            ],
            &env,
        )
    };
    let s0 = spawn(0, "ca.crt");
    let s1 = spawn(1, "other_ca.crt");
    let ca = d.join("ca.crt");
    let secret = "routing-tls-token-0123456789abcdef0123456789";
    let url = |shard: usize, blk: u32| {
        format!(
            "https://127.0.0.1:{}/page/1663/5/16384/main/{blk}?wait_ms=10",
            ports[shard]
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while curl_tls(&ca, secret, &url(0, 0)).0 == 0 || curl_tls(&ca, secret, &url(1, 0)).0 == 0 {
        assert!(
            Instant::now() < deadline,
            "APIs not up\n{}\n{}",
            s0.log_text(),
            s1.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (mut proxied, mut failed) = (0, 0);
    for blk in 0..16 {
        // Through shard 0 (trusts the peers' CA): every block answers 503 (bootstrapping),
        // locally or proxied from shard 1.
        let (status, head, body) = curl_tls(&ca, secret, &url(0, blk));
        assert_eq!(status, 503, "block {blk} via shard 0: {head}\n{body}");
        if header(&head, "x-fpw-routed") == Some("proxied") {
            proxied += 1;
        }
        // Through shard 1 (trusts another CA): its own blocks 503, shard 0's a 502.
        let (status, head, body) = curl_tls(&ca, secret, &url(1, blk));
        match status {
            503 => assert_eq!(header(&head, "x-fpw-routed"), None, "{head}"),
            502 => {
                assert!(
                    body.contains(&format!("shard 0 at https://127.0.0.1:{}", ports[0]))
                        && body.contains("certificate"),
                    "{body}"
                );
                failed += 1;
            }
            s => panic!("block {blk} via shard 1: {s} {head}\n{body}"),
        }
    }
    assert!(
        proxied > 0 && failed > 0,
        "proxied {proxied}, failed {failed}"
    );
    // Each block has one owner: proxied by shard 0 when shard 1 owns it, failed through
    // shard 1 when shard 0 owns it.
    assert_eq!(proxied + failed, 16, "proxied {proxied}, failed {failed}");
    for log in [s0.log_text(), s1.log_text()] {
        assert!(!log.contains(secret), "token in the log");
    }

    // Refused at start, with the reason.
    let refused = |peers: &str| {
        let out = std::process::Command::new(crate::support::HELPER_BIN)
            .args(["run", "--connect", "host=127.0.0.1 port=1", "--data-dir"])
            .arg(d.join("refused"))
            .args([
                "--object-store",
                "s3://fpw/tls",
                "--shards",
                "2",
                "--peers",
                peers,
            ])
            .envs(env)
            .output()
            .expect("redo-helper run");
        assert_eq!(out.status.code(), Some(2), "{peers}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused("http://10.1.2.3:7432,https://10.1.2.4:7432");
    assert!(err.contains("plain HTTP and not on loopback"), "{err}");
    let err = refused("https://10.1.2.3:7432");
    assert!(err.contains("lists 1 URLs but --shards is 2"), "{err}");
}

/// SIGHUP re-reads `--peers` (here from the configuration file): shard 0 starts with a
/// wrong address for shard 1, so its reads of shard 1's pages fail (502); with the file
/// fixed and SIGHUP, the same reads are routed to shard 1 and equal its own answers, and the
/// routing counters run on. A list that does not parse leaves the router in force.
#[test]
fn sighup_rereads_the_peers() {
    let c = routing_cluster();
    let sw = SeaweedFs::start();
    let dir = TempDir::new("routing-sighup");
    let token = shared_token(&dir);
    let ports = [free_port(), free_port()];
    let nobody = free_port();
    assert!(ports[0] != ports[1] && !ports.contains(&nobody));
    let config = dir.path().join("shard0.toml");
    let write_peers = |shard1: &str| {
        std::fs::write(
            &config,
            format!("peers = \"http://127.0.0.1:{},{shard1}\"\n", ports[0]),
        )
        .expect("config file")
    };
    write_peers(&format!("http://127.0.0.1:{nobody}"));
    let [mut s0, mut s1] = spawn_streaming_pair(&c, &sw, ports, &token, &dir, Some(&config));
    c.sql("CHECKPOINT");
    let target = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    for h in [&mut s0, &mut s1] {
        h.wait_status("checkpoint decoded", Duration::from_secs(90), |s| {
            status_lsn(s, "decoded_lsn") >= target
        });
    }
    // Pages of pgbench_accounts that shard 1 owns: shard 0 cannot reach it.
    let relpath = c.sql("SELECT pg_relation_filepath('pgbench_accounts')");
    let mut parts = relpath.trim().trim_start_matches("base/").split('/');
    let (db, relnode) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let pages: Vec<String> = (0..64)
        .map(|blk| format!("/page/1663/{db}/{relnode}/main/{blk}"))
        .filter(|page| {
            let r = http(&s0.listen, "GET", page).expect("shard 0 answers");
            assert!(r.status == 200 || r.status == 502, "{page}: {}", r.status);
            r.status == 502
        })
        .collect();
    assert!(
        !pages.is_empty(),
        "no page of shard 1 among the first 64 blocks"
    );

    let hup = |h: &HelperProcess| {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        let rc = unsafe { libc::kill(h.child.id() as libc::pid_t, libc::SIGHUP) };
        assert_eq!(rc, 0);
    };
    let wait_log = |h: &HelperProcess, what: &str, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.log_text().matches(what).count() < n {
            assert!(Instant::now() < deadline, "no {what:?}: {}", h.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // A list that does not parse (one URL for two shards) keeps the router in force.
    std::fs::write(&config, "peers = \"http://127.0.0.1:1\"\n").expect("config file");
    hup(&s0);
    wait_log(&s0, "SIGHUP: --peers not reloaded", 1);
    assert_eq!(
        http(&s0.listen, "GET", &pages[0]).expect("answer").status,
        502
    );

    write_peers(&format!("http://127.0.0.1:{}", ports[1]));
    hup(&s0);
    wait_log(&s0, "SIGHUP: routing reads of other shards' pages to", 1);
    for page in &pages {
        let routed = http(&s0.listen, "GET", page).expect("shard 0 answers");
        let direct = http(&s1.listen, "GET", page).expect("shard 1 answers");
        assert_eq!(routed.status, 200, "{page} via shard 0: {}", routed.headers);
        assert_eq!(
            routed.body, direct.body,
            "{page}: routed differs from its owner's"
        );
    }
    let metrics = s0.metrics().expect("metrics");
    let count = |outcome: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("redo_helper_routed_reads_total")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(count("failed") > pages.len() as u64, "{metrics}");
    assert!(count("proxied") >= pages.len() as u64, "{metrics}");
}
