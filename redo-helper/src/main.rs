//! `redo-helper` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use redo_helper::wal::Lsn;
use redo_helper::waldump::{self, WaldumpOptions};

#[derive(Parser)]
#[command(
    name = "redo-helper",
    version,
    about = "fpw_pushdown storage-side WAL redo helper"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the version and exit.
    Version,
    /// Decode WAL and print one line per record, like pg_waldump (PostgreSQL 15).
    Waldump {
        /// Directory holding the WAL segment files (default: the FILE's directory, or pg_wal).
        #[arg(short = 'p', long)]
        path: Option<PathBuf>,
        /// Start reading at this LSN (first record at or after it).
        #[arg(short = 's', long)]
        start: Option<Lsn>,
        /// Stop reading at this LSN.
        #[arg(short = 'e', long)]
        end: Option<Lsn>,
        /// Timeline of the segment files to read.
        #[arg(short = 't', long)]
        timeline: Option<u32>,
        /// Show statistics instead of records; `--stats=record` per record type.
        #[arg(short = 'z', long, num_args = 0..=1, require_equals = true, default_missing_value = "rmgr",
              value_parser = ["rmgr", "record"])]
        stats: Option<String>,
        /// Only records referencing this block: SPC/DB/REL[/FORK]/BLK.
        #[arg(short = 'B', long, value_parser = waldump::parse_block_filter)]
        block: Option<redo_helper::wal::PageKey>,
        /// Stop after this many records.
        #[arg(short = 'n', long)]
        limit: Option<u64>,
        /// Segment files (STARTSEG [ENDSEG]); they set the default start, end and timeline.
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("redo-helper {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Waldump {
            path,
            start,
            end,
            timeline,
            stats,
            block,
            limit,
            files,
        } => {
            let opts = WaldumpOptions {
                path,
                start,
                end,
                timeline,
                stats: stats.map(|s| s == "record"),
                block,
                limit,
                files,
            };
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            match waldump::run(&opts, &mut lock) {
                Ok(summary) => {
                    if let Some(e) = summary.end_of_wal {
                        match summary.last_lsn {
                            Some(l) => eprintln!("redo-helper: {e} (last record at {l})"),
                            None => eprintln!("redo-helper: {e}"),
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(msg) => {
                    eprintln!("redo-helper: error: {msg}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
