//! `redo-helper repair`: repairs torn pages of a stopped or crashed cluster that ran with
//! full_page_writes off (see `store::repair` for why it works); prints progress on stderr,
//! then the problems and a summary line.

use crate::store::repair::{RepairOptions, RepairProgress, repair};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct RepairArgs {
    /// The helper's data directory.
    #[arg(long = "data-dir", value_name = "DIR")]
    data_dir: PathBuf,
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
}

/// Runs `repair`; exit status 1 when a page changed since the checkpoint could not be
/// rebuilt or an error occurred, 2 when the repair could not start.
pub fn main(args: RepairArgs) -> ExitCode {
    let opts = RepairOptions {
        data_dir: args.data_dir,
        pgdata: args.pgdata,
        progress_every: Duration::from_secs(5),
        even_if_clean: args.even_if_clean,
        changed_only: args.changed_only,
    };
    let pgdata = opts.pgdata.display().to_string();
    let mut report = |p: RepairProgress| match p {
        RepairProgress::CleanShutdown { checkpoint } => eprintln!(
            "redo-helper: {pgdata} was shut down cleanly (checkpoint at {checkpoint}): nothing to repair"
        ),
        RepairProgress::WalTaken(w) => eprintln!(
            "redo-helper: WAL {}..{}: {} records taken from pg_wal (stopped at: {})",
            w.from, w.end, w.records, w.stopped
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
    };
    match repair(&opts, &mut report) {
        Ok(sum) => {
            for p in &sum.problems {
                println!("problem: {p}");
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
