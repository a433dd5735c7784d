//! A SeaweedFS server (master, volume, filer, S3 gateway) for the object-storage tests,
//! started by `scripts/seaweedfs.sh` on free loopback ports with credentials, and a client
//! of the test's own (not the helper's code) for looking into the bucket.

use crate::common::TempDir;
use object_store::ObjectStore;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SEG: u64 = 16 << 20;
pub const KEY_ID: &str = "fpw-test-key";
pub const SECRET: &str = "fpw-test-secret-5f0c2a";
pub const BUCKET: &str = "fpw";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/seaweedfs.sh")
}

/// A SeaweedFS server (master, volume, filer, S3) of its own; killed on drop.
pub struct SeaweedFs {
    dir: TempDir,
    port: u16,
}

/// A port P with P..P+7 free (S3, master, volume, filer and their gRPC ports).
fn free_port_range() -> u16 {
    for _ in 0..100 {
        let p = crate::common::free_port();
        if p > 65000 {
            continue;
        }
        if (1..8).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
    panic!("no 8 consecutive free ports");
}

impl SeaweedFs {
    pub fn start() -> SeaweedFs {
        let dir = TempDir::new("seaweedfs");
        let port = free_port_range();
        let s = SeaweedFs { dir, port };
        s.launch();
        s
    }

    pub fn launch(&self) {
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .arg(BUCKET)
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .output()
            .expect("seaweedfs.sh");
        assert!(
            out.status.success(),
            "seaweedfs.sh start failed (scripts/setup.sh installs weed): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL: an outage.
    pub fn kill(&self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("kill")
            .arg(self.dir.path())
            .status();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// The test's own client (not the helper's code) for looking into the bucket.
    pub fn client(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            object_store::aws::AmazonS3Builder::new()
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_bucket_name(BUCKET)
                .with_region("us-east-1")
                .with_access_key_id(KEY_ID)
                .with_secret_access_key(SECRET)
                .build()
                .expect("S3 client"),
        )
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every object under `prefix`: (key, size).
pub fn list(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<(String, u64)> {
    use futures_util::StreamExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = Arc::clone(store);
    let prefix = object_store::path::Path::from(prefix);
    rt.block_on(async move {
        let mut out = Vec::new();
        let mut s = store.list(Some(&prefix));
        while let Some(m) = s.next().await {
            let m = m.expect("list");
            out.push((m.location.to_string(), m.size));
        }
        out
    })
}

/// End of the contiguous WAL under `prefix/wal/` from its first segment, read directly from
/// the bucket: whole segments, then the pieces (`.partial/OFFSET`) of the next one.
pub fn bucket_wal_end(store: &Arc<dyn ObjectStore>, prefix: &str) -> u64 {
    bucket_wal(store, prefix).1
}

/// (first segment number, end of the contiguous WAL) of the bucket.
pub fn bucket_wal(store: &Arc<dyn ObjectStore>, prefix: &str) -> (u64, u64) {
    let mut whole = std::collections::BTreeSet::new();
    let mut pieces: std::collections::BTreeMap<u64, Vec<(u64, u64)>> = Default::default();
    for (key, size) in list(store, &format!("{prefix}/wal")) {
        let name = key.rsplit_once("/wal/").map(|(_, n)| n).unwrap_or(&key);
        let (seg, piece) = match name.split_once(".partial/") {
            Some((s, p)) => (s, Some(p)),
            None => (name, None),
        };
        let segno = u64::from_str_radix(&seg[8..16], 16).unwrap() * 256
            + u64::from_str_radix(&seg[16..24], 16).unwrap();
        match piece {
            None => {
                assert_eq!(size, SEG, "{key}");
                whole.insert(segno);
            }
            Some(p) => pieces
                .entry(segno)
                .or_default()
                .push((u64::from_str_radix(p, 16).unwrap(), size)),
        }
    }
    let Some(first) = whole.iter().chain(pieces.keys()).min().copied() else {
        return (0, 0);
    };
    let mut segno = first;
    while whole.contains(&segno) {
        segno += 1;
    }
    let mut off = 0;
    let mut v = pieces.remove(&segno).unwrap_or_default();
    v.sort_unstable();
    for (o, size) in v {
        if o > off {
            break;
        }
        off = off.max(o + size);
    }
    (first, segno * SEG + off)
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
