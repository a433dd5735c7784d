//! `redo-helper` command line: parses it and dispatches to the subcommand's module in
//! `redo_helper::cmd`, where arguments, orchestration and printing live.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use redo_helper::cmd;

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
    /// Run the helper: bootstrap from BASE_BACKUP once, then stream, archive and index WAL.
    Run(cmd::run::RunArgs),
    /// Connect to the compute as `run` would (TLS, authentication, server version check),
    /// print what protects the connection and which server it reached, and disconnect.
    Probe(cmd::probe::ProbeArgs),
    /// Check the pages the helper serves (stop `run` first: this takes the directory's lock):
    /// every page at the newest decoded LSN against a cluster's data files after CHECKPOINT
    /// (masked, FSM skipped), and random historical reads against the replay of their whole
    /// chain.
    Check(cmd::check::CheckArgs),
    /// Repair torn pages of a stopped or crashed cluster that ran with full_page_writes off,
    /// before starting it again (stop `run` first): takes the WAL in PGDATA/pg_wal the helper
    /// had not received, writes every page changed since the last checkpoint's REDO location
    /// as of the end of WAL, and rewrites any other page failing its checksum or differing
    /// from the helper's (masked).
    Repair(cmd::repair::RepairArgs),
    /// Decode WAL and print one line per record, like pg_waldump (PostgreSQL 15).
    Waldump(cmd::waldump::WaldumpArgs),
    /// Replay the store's WAL with the Rust redo and check every page against the records'
    /// consistency images (wal_consistency_checking) and, with --pgdata, the data files.
    Verify(cmd::verify::VerifyArgs),
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    // The service logs what it does (bootstrap progress, streaming, retention) at info; the
    // one-shot commands print their results and log only problems. RUST_LOG overrides both.
    let default_level = match command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .init();
    match command {
        Command::Version => {
            println!("redo-helper {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run(args) => cmd::run::main(args),
        Command::Probe(args) => cmd::probe::main(args),
        Command::Check(args) => cmd::check::main(args),
        Command::Repair(args) => cmd::repair::main(args),
        Command::Waldump(args) => cmd::waldump::main(args),
        Command::Verify(args) => cmd::verify::main(args),
    }
}
