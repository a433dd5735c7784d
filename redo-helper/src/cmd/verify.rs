//! `redo-helper verify`: replays the store's WAL with the Rust redo and checks every page
//! against the records' consistency images and, with `--pgdata`, the data files; prints the
//! first problems, the record types, per-type costs (with `--bench`) and a summary line.

use crate::store::replay::{ReplayOptions, TypeCost};
use crate::store::verify::{VerifyOptions, verify};
use crate::wal::page::Lsn;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The helper's data directory.
    #[arg(long = "data-dir", value_name = "DIR")]
    data_dir: PathBuf,
    /// Also compare every page with this cluster's data files (after a CHECKPOINT).
    #[arg(long, value_name = "PGDATA")]
    pgdata: Option<PathBuf>,
    /// First record to replay (default: the bootstrap backup's start).
    #[arg(long)]
    start: Option<Lsn>,
    /// Stop before this LSN (default: the archive's flush position).
    #[arg(long)]
    end: Option<Lsn>,
    /// Replay only (no consistency comparisons) and print throughput and per-type cost.
    #[arg(long)]
    bench: bool,
    /// Replay threads (pages are partitioned among them).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Hand pages over between replay threads every N batches (for tests).
    #[arg(long, value_name = "N", hide = true)]
    hand_over_every: Option<usize>,
    /// Take pages back to the decoding thread every N batches (for tests).
    #[arg(long, value_name = "N", hide = true)]
    take_back_every: Option<usize>,
}

/// Runs `verify`; exit status 1 on any mismatch, 2 when it could not run.
pub fn main(args: VerifyArgs) -> ExitCode {
    let opts = VerifyOptions {
        data_dir: args.data_dir,
        pgdata: args.pgdata,
        start: args.start,
        end: args.end,
        replay: ReplayOptions {
            check_consistency: !args.bench,
            timing: args.bench,
            workers: args.workers,
            hand_over_every: args.hand_over_every,
            take_back_every: args.take_back_every,
            ..Default::default()
        },
    };
    let opts = &opts;
    let sum = match verify(opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("redo-helper verify: error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(m) = &sum.replay.first_mismatch {
        println!("first mismatch: {m}");
    }
    if let Some(m) = &sum.pgdata_first_mismatch {
        println!("first data-file mismatch: {m}");
    }
    if let Some(m) = &sum.replay.first_redo_error {
        println!("first redo error: {m}");
    }
    if let Some(m) = &sum.replay.first_unreadable {
        println!("first unreadable page: {m}");
    }
    if sum.total_vm_bits_not_in_wal() > 0 {
        println!(
            "visibility-map pages with bits the WAL does not carry (vm_bits_not_in_wal; not mismatches: \
             CREATE DATABASE with the WAL_LOG strategy logs VM pages as standard pages, whose \
             bitmap is the image's hole, so PostgreSQL's own replay clears them too): {} in the \
             data files, {} against consistency images",
            sum.pgdata_vm_bits_not_in_wal, sum.replay.vm_bits_not_in_wal
        );
    }
    if let Some(m) = &sum.pgdata_first_vm_bits_not_in_wal {
        println!("first data-file page with VM bits not in the WAL: {m}");
    }
    if let Some(m) = &sum.replay.first_vm_bits_not_in_wal {
        println!("first consistency image with VM bits not in the WAL: {m}");
    }
    if !sum.pgdata_by_kind.is_empty() {
        let kinds: Vec<String> = sum
            .pgdata_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("data-file pages compared by kind: {}", kinds.join(", "));
    }
    let types: Vec<String> = sum
        .replay
        .per_type
        .iter()
        .map(|(k, c)| format!("{k} {}", c.records))
        .collect();
    println!("record types: {}", types.join(", "));
    if let Some(shares) = sum.replay.decoder_shares {
        println!(
            "parallel replay: {} threads, {} hand-overs of pages, the decoding thread kept {shares} of 256 page shares ({} times taken back)",
            opts.replay.workers, sum.replay.hand_overs, sum.replay.take_backs
        );
    }
    if opts.replay.timing {
        let secs = sum.replay.replay_time.as_secs_f64().max(1e-9);
        println!(
            "replay: {} records, {:.1} MB of WAL in {:.3}s: {:.0} records/s, {:.1} MB/s",
            sum.replay.records,
            sum.replay.wal_bytes as f64 / 1e6,
            secs,
            sum.replay.records as f64 / secs,
            sum.replay.wal_bytes as f64 / 1e6 / secs
        );
        let mut types: Vec<(&String, &TypeCost)> = sum.replay.per_type.iter().collect();
        types.sort_by_key(|t| std::cmp::Reverse(t.1.time));
        // Shares of the apply time summed over all types and the base pages' loads (and
        // threads), so they add to 100%.
        let loads = sum.replay.base_load_time.as_secs_f64();
        let apply_secs =
            (types.iter().map(|t| t.1.time.as_secs_f64()).sum::<f64>() + loads).max(1e-9);
        for (name, c) in types.iter().take(5) {
            println!(
                "  {name}: {} records, {:.1}% of apply time, {:.2} us/record",
                c.records,
                100.0 * c.time.as_secs_f64() / apply_secs,
                c.time.as_secs_f64() * 1e6 / c.records.max(1) as f64
            );
        }
        println!(
            "  base pages loaded: {}, {:.1}% of apply time, {:.2} us/page",
            sum.replay.base_pages_loaded,
            100.0 * loads / apply_secs,
            loads * 1e6 / sum.replay.base_pages_loaded.max(1) as f64
        );
    }
    println!("{}", sum.line());
    if sum.total_mismatches() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
