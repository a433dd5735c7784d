//! `redo-helper` command line: parses it and dispatches to the subcommand's module in
//! `redo_helper::cmd`, where arguments, orchestration and printing live.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use log::LevelFilter;
use redo_helper::cmd;
use redo_helper::cmd::run::LogFormat;
use std::ffi::OsString;
use std::io::Write;

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
    /// Print the effective settings of `run` for these arguments (flags, REDO_HELPER_*
    /// environment variables, --config FILE, defaults), each with its source; secrets masked.
    Config(cmd::run::RunArgs),
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
    /// from the helper's (masked). With --helper URL[,URL...] instead of --data-dir, the
    /// pages come from running helpers over their API (remote repair, for a crashed
    /// PostgreSQL host without the helper's files).
    Repair(cmd::repair::RepairArgs),
    /// Decode WAL and print one line per record, like pg_waldump (PostgreSQL 15).
    Waldump(cmd::waldump::WaldumpArgs),
    /// Replay the store's WAL with the Rust redo and check every page against the records'
    /// consistency images (wal_consistency_checking) and, with --pgdata, the data files.
    Verify(cmd::verify::VerifyArgs),
}

/// `waldump` parsed on its own. Why: it is a short-lived tool measured against pg_waldump,
/// which decodes 64 MB of WAL in ~35 ms, and the full command line (every subcommand, `run`'s
/// settings with their environment variables, cloned and parsed twice by `cmd::config`) took
/// a millisecond or two before the first record. `waldump` reads no settings from the
/// environment or a configuration file, so nothing is lost.
#[derive(Parser)]
#[command(
    name = "redo-helper waldump",
    bin_name = "redo-helper waldump",
    about = "Decode WAL and print one line per record, like pg_waldump (PostgreSQL 15)."
)]
struct WaldumpCli {
    #[command(flatten)]
    args: cmd::waldump::WaldumpArgs,
}

/// The command line with `run`'s settings from the environment and the configuration file
/// merged in (`cmd::config`).
fn parse(argv: Vec<OsString>) -> Result<(Cli, cmd::config::Merged), ExitCode> {
    let merged = cmd::config::parse(Cli::command(), argv).map_err(|e| e.report())?;
    let cli = Cli::from_arg_matches(&merged.matches).map_err(|e| {
        let _ = e.print();
        ExitCode::from(2)
    })?;
    Ok((cli, merged))
}

/// `run`'s settings parsed again for SIGHUP: the same arguments, the file read anew.
fn reload_run_args(argv: Vec<OsString>) -> Result<cmd::run::RunArgs, String> {
    let merged = cmd::config::parse(Cli::command(), argv).map_err(|e| e.to_string())?;
    match Cli::from_arg_matches(&merged.matches).map_err(|e| e.to_string())? {
        Cli {
            command: Command::Run(args),
        } => Ok(args),
        _ => Err("not a run command line".into()),
    }
}

fn main() -> ExitCode {
    // Everything the helper creates (its data directory, the API socket and token, files
    // `repair` adds to PGDATA) is for its owner only, as PostgreSQL's PG_MODE_MASK_OWNER
    // umask; the store also creates its files with explicit 0600/0700 modes.
    // SAFETY: umask only changes this process's file-creation mask; no thread runs yet.
    unsafe { libc::umask(0o077) };
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "waldump") {
        // `waldump` parsed alone (see `WaldumpCli`); clap prints help and errors itself.
        let cli = WaldumpCli::try_parse_from(&argv[1..]).unwrap_or_else(|e| e.exit());
        init_logging(LogFormat::Text, LevelFilter::Warn);
        return cmd::waldump::main(cli.args);
    }
    let (cli, merged) = match parse(argv.clone()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let command = cli.command;
    // The service logs what it does (bootstrap progress, streaming, retention) at info (or
    // `--log-level`); the one-shot commands print their results and log only problems.
    // RUST_LOG overrides both.
    match &command {
        Command::Run(args) => init_logging(
            args.log_format(),
            args.log_level().unwrap_or(LevelFilter::Info),
        ),
        _ => init_logging(LogFormat::Text, LevelFilter::Warn),
    }
    match command {
        Command::Version => {
            println!("redo-helper {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            cmd::run::set_reload(Box::new(move || reload_run_args(argv.clone())));
            cmd::run::main(args)
        }
        Command::Config(_) => cmd::config::print(&cmd::config::with_env(Cli::command()), &merged),
        Command::Probe(args) => cmd::probe::main(args),
        Command::Check(args) => cmd::check::main(args),
        Command::Repair(args) => cmd::repair::main(args),
        Command::Waldump(args) => cmd::waldump::main(args),
        Command::Verify(args) => cmd::verify::main(args),
    }
}

/// Sets up logging on stderr in `format`. RUST_LOG (env_logger's syntax), when set and not
/// empty, decides what is logged. Otherwise every crate logs at `default_level`, and this
/// crate's records pass the filter at any level while the global `log::max_level` (set to
/// `default_level` here) does the levelling: a reload can then change the helper's level
/// with `log::set_max_level` alone, without rebuilding the logger (env_logger's filter is
/// fixed once it is installed).
fn init_logging(format: LogFormat, default_level: LevelFilter) {
    // Env::new() names no filter variable: only RUST_LOG_STYLE (colours) is read here.
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::new().write_style("RUST_LOG_STYLE"));
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    match &spec {
        Some(spec) => {
            builder.parse_filters(spec);
        }
        None => {
            builder
                .filter_level(default_level)
                .filter_module("redo_helper", LevelFilter::Trace);
        }
    }
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = JsonLogLine {
                ts: buf.timestamp_micros().to_string(),
                level: record.level().as_str(),
                target: record.target(),
                message: record.args().to_string(),
            };
            match serde_json::to_string(&line) {
                Ok(json) => writeln!(buf, "{json}"),
                // Strings always encode; this keeps the line JSON should that ever change.
                Err(_) => writeln!(
                    buf,
                    r#"{{"level":"ERROR","message":"unencodable log line"}}"#
                ),
            }
        });
    }
    builder.init();
    if spec.is_none() {
        log::set_max_level(default_level);
    }
}

/// One line of `--log-format json`.
#[derive(serde::Serialize)]
struct JsonLogLine<'a> {
    /// RFC 3339, UTC, microseconds.
    ts: String,
    level: &'a str,
    target: &'a str,
    message: String,
}
