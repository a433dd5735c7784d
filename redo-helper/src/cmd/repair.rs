//! `redo-helper repair`: repairs torn pages of a stopped or crashed cluster that ran with
//! full_page_writes off (see `store::repair` for why it works); prints progress on stderr,
//! then the problems and a summary line.
//!
//! With `--helper URL[,URL...]` instead of `--data-dir`, the pages come from running
//! helpers over their API (`remote_repair`): a crash of the PostgreSQL host is repaired
//! without the helpers' files on it.
//!
//! `--if-needed` is PostgreSQL's pre-start step (`ExecStartPre=+redo-helper repair
//! --if-needed ...`, run as root): nothing after a clean shutdown, without touching the
//! helper's directory; after a crash, a running helper is asked to hand its directory over
//! for the repair (see `store::repair`). Run as root, files the repair created in the
//! helper's directory (new WAL segments) are given to the directory's owner afterwards.

use crate::remote_repair::{RemoteRepairOptions, repair_from_helpers};
use crate::store::repair::{RepairOptions, RepairProgress, RepairSummary, repair};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct RepairArgs {
    /// The helper's data directory (local repair, on the helper's host).
    #[arg(
        long = "data-dir",
        value_name = "DIR",
        required_unless_present = "helper",
        conflicts_with = "helper"
    )]
    data_dir: Option<PathBuf>,
    /// Remote repair: the API base URL of every running helper (every shard of a sharded
    /// deployment), comma-separated: http://HOST:PORT or https://HOST:PORT.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    helper: Vec<String>,
    /// Remote repair: the file holding the helpers' API token (their --api-token-file).
    #[arg(long, value_name = "FILE", requires = "helper")]
    helper_token_file: Option<PathBuf>,
    /// Remote repair: the PEM CA certificate(s) that sign the helpers' TLS certificates
    /// (default: the system's roots).
    #[arg(long, value_name = "PEM", requires = "helper")]
    helper_ca_file: Option<PathBuf>,
    /// The cluster's data directory (PostgreSQL stopped).
    #[arg(long, value_name = "PGDATA")]
    pgdata: PathBuf,
    /// Check every page even when the cluster was shut down cleanly (by default a clean
    /// shutdown is recognised from pg_control and nothing is done).
    #[arg(long)]
    even_if_clean: bool,
    /// Only write the pages changed since the last checkpoint; skip reading and checking
    /// every other page (faster on a large cluster; a torn hint-bit-only write is then
    /// left to PostgreSQL's data checksums to report).
    #[arg(long)]
    changed_only: bool,
    /// For PostgreSQL's pre-start step: when the helper is running and a repair is needed,
    /// ask it to hand its data directory over (it stops cleanly, re-executes itself and
    /// waits for the repair) instead of failing because the directory is in use.
    #[arg(long, conflicts_with = "helper")]
    if_needed: bool,
    /// How long `--if-needed` waits for the running helper to hand the directory over.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    hand_over_secs: u64,
}

/// Runs `repair`; exit status 1 when a page changed since the checkpoint could not be
/// rebuilt or an error occurred, 2 when the repair could not start.
pub fn main(args: RepairArgs) -> ExitCode {
    let progress_every = Duration::from_secs(5);
    let pgdata = args.pgdata.display().to_string();
    let mut report = |p: RepairProgress| print_progress(&pgdata, p);
    let Some(data_dir) = args.data_dir else {
        let opts = RemoteRepairOptions {
            helpers: args.helper,
            token_file: args.helper_token_file,
            ca_file: args.helper_ca_file,
            pgdata: args.pgdata.clone(),
            progress_every,
            even_if_clean: args.even_if_clean,
            changed_only: args.changed_only,
        };
        return finish(repair_from_helpers(&opts, &mut report), !opts.changed_only);
    };
    let opts = RepairOptions {
        data_dir,
        pgdata: args.pgdata.clone(),
        progress_every,
        even_if_clean: args.even_if_clean,
        changed_only: args.changed_only,
        hand_over: args
            .if_needed
            .then(|| Duration::from_secs(args.hand_over_secs)),
    };
    let result = repair(&opts, &mut report);
    if let Err(e) = give_back_to_owner(&opts.data_dir) {
        eprintln!(
            "redo-helper: repair: giving {}'s new files back to its owner: {e}",
            opts.data_dir.display()
        );
    }
    finish(result, false)
}

fn print_progress(pgdata: &str, p: RepairProgress) {
    match p {
        RepairProgress::CleanShutdown { checkpoint } => eprintln!(
            "redo-helper: {pgdata} was shut down cleanly (checkpoint at {checkpoint}): nothing to repair"
        ),
        RepairProgress::WalTaken(w) => eprintln!(
            "redo-helper: WAL {}..{}: {} records taken from pg_wal (stopped at: {})",
            w.from, w.end, w.records, w.stopped
        ),
        RepairProgress::HelpersAsked {
            helpers,
            pages,
            end,
        } => eprintln!(
            "redo-helper: {helpers} helper(s) answered, decoded WAL up to {end}: {pages} pages to write"
        ),
        RepairProgress::Pages {
            done,
            total,
            written,
            rewritten,
            elapsed,
        } => eprintln!(
            "redo-helper: {done}/{total} pages ({written} written, {rewritten} rewritten) in {:.0}s",
            elapsed.as_secs_f64()
        ),
        RepairProgress::Done {
            total,
            synced,
            elapsed,
        } => eprintln!(
            "redo-helper: {total} pages done in {:.1}s, {synced} data files synced",
            elapsed.as_secs_f64()
        ),
    }
}

/// Prints the problems and the summary line; exit status 1 when a page could not be
/// repaired, 2 when the repair could not run. `remote_scan`: a remote repair that checked
/// unchanged pages, which it can only do by their checksums.
fn finish<E: std::fmt::Display>(result: Result<RepairSummary, E>, remote_scan: bool) -> ExitCode {
    match result {
        Ok(sum) => {
            for p in &sum.problems {
                println!("problem: {p}");
            }
            if remote_scan && !sum.clean_shutdown && !sum.data_checksums {
                println!(
                    "note: the cluster has no data checksums: pages not changed since the \
                     checkpoint were not checked (a remote repair cannot tell a torn one \
                     without fetching every page; local repair or `redo-helper check` can)"
                );
            }
            println!("{}", sum.line());
            if sum.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("redo-helper: repair: {e}");
            ExitCode::from(2)
        }
    }
}

/// Run as root, gives the files in the helper's data directory that are not its owner's
/// (created by this repair: new WAL segments, the index) to that owner, so that the helper,
/// running as its own user, can write them again.
fn give_back_to_owner(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let top = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let (uid, gid) = (top.uid(), top.gid());
    if uid == 0 {
        return Ok(());
    }
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.uid() != uid || meta.gid() != gid {
                std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
            }
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}
