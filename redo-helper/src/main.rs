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
    /// Run the helper: bootstrap from BASE_BACKUP once, then stream, archive and index WAL.
    Run {
        /// libpq connection string or URI of the compute (a role with REPLICATION).
        #[arg(long = "connect", value_name = "CONNINFO")]
        connect: String,
        /// The helper's own data directory (created if missing; one helper per directory).
        #[arg(long = "data-dir", value_name = "DIR")]
        data_dir: PathBuf,
        /// Physical replication slot to create (if missing) and stream from.
        #[arg(long, default_value = "fpw_pushdown")]
        slot: String,
        /// Loopback address for /status and /metrics (e.g. 127.0.0.1:7432).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<std::net::SocketAddr>,
        /// How often received WAL is fsynced and acknowledged, in milliseconds.
        #[arg(long, default_value_t = 100)]
        flush_interval_ms: u64,
        /// Longest pause between reconnection attempts, in seconds.
        #[arg(long, default_value_t = 30)]
        max_backoff_secs: u64,
        /// Generate a page image when a page has more than this many deltas since its last image.
        #[arg(long, default_value_t = redo_helper::imagegen::DEFAULT_IMAGE_THRESHOLD)]
        image_threshold: u32,
        /// Image generation threads (default: cores - 1, at least 1).
        #[arg(long)]
        imagegen_workers: Option<usize>,
        /// Pages waiting for an image above which flush acknowledgements are held back.
        #[arg(long, default_value_t = 100_000)]
        backpressure_queue: usize,
        /// Recently served pages kept in memory (8 KB each; 0 disables the cache).
        #[arg(long, default_value_t = redo_helper::store::page_store::DEFAULT_CACHE_PAGES)]
        page_cache_pages: usize,
        /// History to keep: WAL segments and page images older than this are removed and
        /// pages can no longer be read before it. A WAL distance (512MB, 4GB, 1TB; no unit:
        /// bytes), a time (30min, 2h, 7d; counted while the helper runs), or `all`.
        #[arg(long, value_name = "SIZE|TIME|all",
              default_value = redo_helper::store::retention::DEFAULT_RETAIN,
              value_parser = redo_helper::store::retention::parse_retain)]
        retain: redo_helper::store::retention::Retain,
        /// CPU priority (nice value, -20..19) of the helper's threads, for a helper that shares
        /// cores with the database: at a positive value it yields to the backends and falls
        /// behind only when the cores have no idle time (then image generation queues and
        /// back-pressure holds acknowledgements). 0 keeps the priority it was started with.
        #[arg(long, default_value_t = DEFAULT_NICE, allow_negative_numbers = true,
              value_parser = clap::value_parser!(i32).range(-20..=19))]
        nice: i32,
        /// How often retention checks whether the horizon can move, in milliseconds.
        #[arg(long, default_value_t = 10_000, hide = true)]
        retention_interval_ms: u64,
        /// Entries per image file (0: the default; tests use small files).
        #[arg(long, default_value_t = 0, hide = true)]
        image_file_entries: u64,
    },
    /// Check the pages the helper serves (stop `run` first: this takes the directory's lock):
    /// every page at the newest decoded LSN against a cluster's data files after CHECKPOINT
    /// (masked, FSM skipped), and random historical reads against the replay of their whole
    /// chain.
    Check {
        /// The helper's data directory.
        #[arg(long = "data-dir", value_name = "DIR")]
        data_dir: PathBuf,
        /// The cluster's data directory (after a CHECKPOINT, with no writes since).
        #[arg(long, value_name = "PGDATA")]
        pgdata: Option<PathBuf>,
        /// Random (page, historical LSN) reads to compare with the full-chain replay.
        #[arg(long, default_value_t = 1000)]
        samples: usize,
        /// Seed of the sample.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Repair torn pages of a stopped or crashed cluster that ran with full_page_writes off,
    /// before starting it again (stop `run` first): takes the WAL in PGDATA/pg_wal the helper
    /// had not received, writes every page changed since the last checkpoint's REDO location
    /// as of the end of WAL, and rewrites any other page failing its checksum or differing
    /// from the helper's (masked).
    Repair {
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
    },
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
    /// Replay the store's WAL with the Rust redo and check every page against the records'
    /// consistency images (wal_consistency_checking) and, with --pgdata, the data files.
    Verify {
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
        Command::Run {
            connect,
            data_dir,
            slot,
            listen,
            flush_interval_ms,
            max_backoff_secs,
            image_threshold,
            imagegen_workers,
            backpressure_queue,
            page_cache_pages,
            retain,
            nice,
            retention_interval_ms,
            image_file_entries,
        } => {
            set_nice(nice);
            let conninfo = match redo_helper::stream::conninfo::ConnInfo::parse(&connect) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("redo-helper: {e}");
                    return ExitCode::from(2);
                }
            };
            let workers = imagegen_workers.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get().saturating_sub(1))
                    .unwrap_or(1)
                    .max(1)
            });
            run_service(redo_helper::service::RunOptions {
                conninfo,
                data_dir,
                slot,
                listen,
                flush_interval: std::time::Duration::from_millis(flush_interval_ms.max(1)),
                flush_bytes: 4 << 20,
                max_backoff: std::time::Duration::from_secs(max_backoff_secs.max(1)),
                image_threshold: image_threshold.max(1),
                imagegen_workers: workers,
                backpressure_depth: backpressure_queue,
                cache_pages: page_cache_pages,
                retain,
                retention_interval: std::time::Duration::from_millis(
                    retention_interval_ms.max(100),
                ),
                image_file_entries,
            })
        }
        Command::Verify {
            data_dir,
            pgdata,
            start,
            end,
            bench,
            workers,
            hand_over_every,
        } => redo_helper::redo::verify::run_cli(&redo_helper::redo::verify::VerifyOptions {
            data_dir,
            pgdata,
            start,
            end,
            skip_consistency: bench,
            timing: bench,
            workers,
            hand_over_every,
            ..Default::default()
        }),
        Command::Check {
            data_dir,
            pgdata,
            samples,
            seed,
        } => run_check(&data_dir, pgdata.as_deref(), samples, seed),
        Command::Repair {
            data_dir,
            pgdata,
            even_if_clean,
            changed_only,
        } => redo_helper::store::repair::run_cli(&redo_helper::store::repair::RepairOptions {
            data_dir,
            pgdata,
            progress_every: std::time::Duration::from_secs(5),
            even_if_clean,
            changed_only,
        }),
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

/// Default `--nice`: the priority the helper was started with. Measured beside PostgreSQL on
/// 2 cores (pgbench TPC-B, 3 alternating pairs each), 10 and 19 did not beat 0 by more than
/// the runs' noise.
const DEFAULT_NICE: i32 = 0;

/// Sets the calling thread's nice value before any other thread starts (on Linux a nice
/// value belongs to a thread; threads created later inherit it). A failure (raising the
/// priority needs privileges) is reported and the helper goes on at its current priority.
fn set_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: setpriority has no memory-safety preconditions; `who` 0 is the caller.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc != 0 {
        eprintln!(
            "redo-helper: cannot set nice {nice}: {}; running at the current priority",
            std::io::Error::last_os_error()
        );
    }
}

/// `redo-helper run`: logs at info by default (RUST_LOG overrides); exits non-zero with the
/// error when something a retry cannot fix happens.
fn run_service(opts: redo_helper::service::RunOptions) -> ExitCode {
    log::set_max_level(log::LevelFilter::Info.max(log::max_level()));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("redo-helper: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(redo_helper::service::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("redo-helper: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `redo-helper check`: prints the first problem and the summary line; exit status 1 on
/// any mismatch or error.
fn run_check(
    data_dir: &std::path::Path,
    pgdata: Option<&std::path::Path>,
    samples: usize,
    seed: u64,
) -> ExitCode {
    use redo_helper::store::check;
    let started = std::time::Instant::now();
    let opened = match redo_helper::service::OfflineStore::open(data_dir) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("redo-helper: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "redo-helper: store opened in {:.1}s ({} pages indexed)",
        started.elapsed().as_secs_f64(),
        opened.store.index.read().map(|i| i.pages()).unwrap_or(0)
    );
    let mut sum = check::CheckSummary::default();
    if let Some(pgdata) = pgdata {
        check::check_against_pgdata(&opened.store, pgdata, &mut sum);
    } else {
        sum.lsn = opened
            .store
            .index
            .read()
            .map(|i| i.last_record_end)
            .unwrap_or_default();
    }
    check::check_history(&opened.store, samples, seed, &mut sum);
    if let Some(p) = &sum.first_problem {
        println!("first problem: {p}");
    }
    println!("{}", sum.line());
    if sum.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
