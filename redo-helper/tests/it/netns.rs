//! Hosts made of Linux network namespaces, for the multi-host tests (`hosts`).
//!
//! A [`Network`] is one private Ethernet: a namespace of its own holds a bridge (the
//! switch), and each host is a namespace with one veth interface `eth0` whose peer is a port
//! of that bridge, with address `10.231.0.N/24`. The veth pairs are created inside the
//! namespaces (`ip -n NS link add ... peer ... netns SWITCH`), so nothing appears in the
//! namespace the tests run in, and the 10.231.0.0/24 addresses exist only on this private
//! Ethernet: every network of every test process can use the same subnet without meeting
//! another. Namespace names carry the process id and a counter (`fpw-PID-N-x`), unique
//! across the test threads and any concurrent test run.
//!
//! Programs run on a host through `ip netns exec NS PROGRAM`, which enters the namespace and
//! then executes PROGRAM in place (the child's PID is the program's). The file system is
//! shared, Unix sockets included: the test reaches PostgreSQL and the helpers' APIs through
//! their sockets, while the servers talk to each other only over the namespaces' TCP/IP.
//!
//! Teardown (`Drop`, also after a failed test): every process still inside one of the
//! network's namespaces (`ip netns pids`, i.e. only processes this test started there) is
//! killed with SIGKILL, then the namespaces are deleted, which removes their interfaces.
//!
//! [`Pki`] makes a private certificate authority and one server certificate for all hosts'
//! addresses with `openssl`, for the TLS of PostgreSQL, the S3 gateway and the helpers' API.

use crate::common::TempDir;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NETWORKS: AtomicU32 = AtomicU32::new(0);

/// One host: a network namespace with one address.
pub struct Host {
    /// Its role in the test ("pg", "s3", "c", ...), for messages.
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl Host {
    /// `program` run inside this host's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).arg(program);
        c
    }
}

/// A private Ethernet and its hosts; torn down on drop.
pub struct Network {
    switch: String,
    pub hosts: Vec<Host>,
}

fn ip_cmd(args: &[&str]) -> Result<Output, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Network {
    /// A network with one host per name, addresses 10.231.0.1, .2, ... in that order. None
    /// (with the reason printed) when this machine cannot make network namespaces (not
    /// root, no `ip`, a container without CAP_SYS_ADMIN): the caller skips its test.
    pub fn new(names: &[&str]) -> Option<Network> {
        let n = NETWORKS.fetch_add(1, Ordering::SeqCst);
        let base = format!("fpw-{}-{n}", std::process::id());
        let switch = format!("{base}-sw");
        if let Err(e) = ip_cmd(&["netns", "add", &switch]) {
            eprintln!(
                "SKIPPED: the multi-host test needs network namespaces (run as root with \
                 iproute2): {e}"
            );
            return None;
        }
        let mut net = Network {
            switch,
            hosts: Vec::new(),
        };
        ip_cmd(&["-n", &net.switch, "link", "add", "br0", "type", "bridge"]).expect("bridge");
        ip_cmd(&["-n", &net.switch, "link", "set", "br0", "up"]).expect("bridge up");
        for (i, name) in names.iter().enumerate() {
            let netns = format!("{base}-{name}");
            ip_cmd(&["netns", "add", &netns]).expect("host namespace");
            let host = Host {
                name: name.to_string(),
                netns,
                ip: Ipv4Addr::new(10, 231, 0, i as u8 + 1),
            };
            // Registered before anything else can fail, so that Drop removes it.
            net.hosts.push(host);
            let host = &net.hosts[i];
            let port = format!("p{i}");
            let cidr = format!("{}/24", host.ip);
            for args in [
                vec!["-n", &host.netns, "link", "set", "lo", "up"],
                vec![
                    "-n",
                    &host.netns,
                    "link",
                    "add",
                    "eth0",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    &net.switch,
                ],
                vec!["-n", &net.switch, "link", "set", &port, "master", "br0"],
                vec!["-n", &net.switch, "link", "set", &port, "up"],
                vec!["-n", &host.netns, "addr", "add", &cidr, "dev", "eth0"],
                vec!["-n", &host.netns, "link", "set", "eth0", "up"],
            ] {
                ip_cmd(&args).unwrap_or_else(|e| panic!("host {name}: {e}"));
            }
        }
        // The bridge runs without STP (iproute2's default), so its ports forward at once.
        Some(net)
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Adds `ip` to host `name` (a service address that moves with what it serves, as a
    /// floating IP or a DNS name would in a real deployment).
    pub fn add_address(&self, name: &str, ip: Ipv4Addr) {
        let cidr = format!("{ip}/24");
        ip_cmd(&[
            "-n",
            &self.host(name).netns,
            "addr",
            "add",
            &cidr,
            "dev",
            "eth0",
        ])
        .unwrap_or_else(|e| panic!("host {name}: {e}"));
    }

    /// Removes the service address `ip` from host `name`.
    pub fn remove_address(&self, name: &str, ip: Ipv4Addr) {
        let cidr = format!("{ip}/24");
        ip_cmd(&[
            "-n",
            &self.host(name).netns,
            "addr",
            "del",
            &cidr,
            "dev",
            "eth0",
        ])
        .unwrap_or_else(|e| panic!("host {name}: {e}"));
    }

    /// The PIDs of the processes inside namespace `ns`.
    fn pids(ns: &str) -> Vec<i32> {
        ip_cmd(&["netns", "pids", ns])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let all: Vec<&str> = self
            .hosts
            .iter()
            .map(|h| h.netns.as_str())
            .chain([self.switch.as_str()])
            .collect();
        // Only processes this test started are in these namespaces: kill them by PID.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids: Vec<i32> = all.iter().flat_map(|ns| Network::pids(ns)).collect();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .output();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for ns in all {
            let _ = ip_cmd(&["netns", "del", ns]);
        }
    }
}

/// A private CA and a server certificate (and key) valid for `127.0.0.1`, `localhost` and
/// the given addresses, made with openssl in a directory of their own.
pub struct Pki {
    dir: TempDir,
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

impl Pki {
    pub fn new(ips: &[Ipv4Addr]) -> Pki {
        let dir = TempDir::new("pki");
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
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
                "/CN=fpw multi-host test CA",
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
                "/CN=fpw multi-host test",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        let mut san = "subjectAltName=IP:127.0.0.1,DNS:localhost".to_string();
        for ip in ips {
            san.push_str(&format!(",IP:{ip}"));
        }
        std::fs::write(d.join("san.ext"), format!("{san}\n")).expect("san.ext");
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
        std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod server.key");
        std::fs::set_permissions(d.join("server.pem"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod server.pem");
        std::fs::set_permissions(d.join("ca.pem"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod ca.pem");
        Pki { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}
