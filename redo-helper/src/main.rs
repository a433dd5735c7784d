//! `redo-helper` command line.

use clap::{Parser, Subcommand};

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
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("redo-helper {}", env!("CARGO_PKG_VERSION")),
    }
}
