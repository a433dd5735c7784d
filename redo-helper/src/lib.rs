//! redo-helper: the storage side of fpw_pushdown. Plain Rust (no pgrx): it follows a
//! PostgreSQL 15, 16, 17 or 18 primary over physical replication, keeps its WAL and a base
//! backup, replays the WAL per resource manager, serves pages by GetPage@LSN, and repairs
//! torn pages after a crash. The design is in `docs/design.md`.
//!
//! Layers, each importing only from those before it (a test checks it):
//!
//! 1. [`wal`]: decoding PostgreSQL's WAL.
//! 2. `pgdata`: a cluster's own files (pg_control, relation paths, data pages).
//! 3. `redo`: the redo of each resource manager on 8 KB pages, masks, comparison.
//! 4. `store`: the helper's data directory: archive, base pages, images, page index,
//!    GetPage, retention, ingest, bulk replay, verify, check and repair.
//! 5. `imagegen`, `stream`, `serve`, `remote_repair`: image generation, the replication
//!    connection, the HTTP API with the status and metrics (`serve` may use `imagegen`),
//!    and repair from running helpers over that API.
//! 6. [`cmd`]: one module per subcommand; all printing is there. Beside it, `fuzzing`: the
//!    entry points of the fuzz targets in `redo-helper/fuzz/`.
//!
//! Modules are private to the crate; what the binary and the integration tests use is
//! re-exported here.

#![warn(unreachable_pub)]

pub mod cmd;
#[doc(hidden)]
pub mod fuzzing;
mod imagegen;
mod pgdata;
mod redo;
mod remote_repair;
mod serve;
mod store;
mod stream;
mod sync;
pub mod wal;

pub use redo::page::{Page, PageLayout, checksum_page};

/// Whether the redo engine replays the page changes of resource manager `rmid`; a page a
/// record of any other rmgr changes is unreadable until a full page image. The integration
/// tests use it to find an access method that is still unreadable.
pub fn rmgr_replayed(rmid: u8) -> bool {
    redo::rmgr_replayed(rmid)
}

/// The layering above, checked on the source: every `crate::m` path in a module names a
/// module of a lower layer (or `sync`, usable by all).
#[cfg(test)]
mod layers {
    use std::path::Path;

    /// The layer of each top-level module; a module may use modules of lower layers only.
    /// `serve` sits above `imagegen` (it pauses and reports it); `stream` and `imagegen`
    /// share a layer and do not use each other.
    const LAYERS: [(&str, u32); 12] = [
        ("sync", 0),
        ("wal", 1),
        ("pgdata", 2),
        ("redo", 3),
        ("store", 4),
        ("imagegen", 5),
        ("stream", 5),
        ("serve", 6),
        ("remote_repair", 6),
        ("cmd", 7),
        ("fuzzing", 7),
        ("main", 8),
    ];

    fn layer(module: &str) -> Option<u32> {
        LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
    }

    /// `crate::x` paths in `code` (comments removed), as module names.
    fn crate_paths(code: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or("");
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                let after = &rest[i + "crate::".len()..];
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
                rest = after;
            }
        }
        out
    }

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src").flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn modules_import_only_from_lower_layers() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let mut violations = Vec::new();
        for path in &all {
            let rel = path.strip_prefix(&src).expect("under src");
            let first = rel.components().next().expect("a component");
            let module = first.as_os_str().to_string_lossy();
            let module = module.trim_end_matches(".rs");
            if module == "lib" {
                continue;
            }
            let Some(own) = layer(module) else {
                violations.push(format!("{}: module {module} has no layer", rel.display()));
                continue;
            };
            let code = std::fs::read_to_string(path).expect("read file");
            for used in crate_paths(&code) {
                match layer(&used) {
                    Some(l) if l < own || used == module => {}
                    _ => violations.push(format!("{}: {module} uses crate::{used}", rel.display())),
                }
            }
        }
        assert!(violations.is_empty(), "{}", violations.join("\n"));
    }

    #[test]
    fn the_check_sees_an_upward_import() {
        assert_eq!(
            crate_paths("use crate::cmd::run; // crate::wal"),
            vec!["cmd"]
        );
        assert!(layer("cmd") > layer("store"));
    }
}
