//! `redo-helper check`: opens the store offline (its index rebuilt from the archive) and
//! checks the pages it serves against a cluster's data files after CHECKPOINT and random
//! historical reads against the replay of their whole chain; prints the first problem and a
//! summary line.

use crate::store::check;
use crate::store::offline::OfflineStore;
use crate::sync::read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct CheckArgs {
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
    /// The bucket of a helper that ran with `--cache-size` (s3://BUCKET/PREFIX, credentials
    /// from the AWS environment as for `run`): the files it evicted are read from there.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    object_store: Option<crate::store::remote::ObjectStoreUrl>,
}

/// Reads the files `run --cache-size` evicted from the bucket.
fn install_cache_reader(
    url: crate::store::remote::ObjectStoreUrl,
    data_dir: &std::path::Path,
) -> Result<(), String> {
    let meta = crate::store::meta::HelperMeta::load(data_dir)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} has no helper.json", data_dir.display()))?;
    let remote = crate::store::remote::Remote::from_env(url).map_err(|e| e.to_string())?;
    let cache = crate::store::cache::LocalCache::reader(
        std::sync::Arc::new(remote),
        data_dir,
        meta.timeline,
        meta.segment_size,
    )
    .map_err(|e| e.to_string())?;
    crate::store::cache::install(Some(cache));
    Ok(())
}

/// Runs `check`; exit status 1 on any mismatch or error, 2 when the store cannot be opened.
pub fn main(args: CheckArgs) -> ExitCode {
    let started = std::time::Instant::now();
    if let Some(url) = args.object_store.clone()
        && let Err(e) = install_cache_reader(url, &args.data_dir)
    {
        eprintln!("redo-helper: {e}");
        return ExitCode::from(2);
    }
    let opened = match OfflineStore::open(&args.data_dir) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("redo-helper: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "redo-helper: store opened in {:.1}s ({} pages indexed)",
        started.elapsed().as_secs_f64(),
        read(&opened.store.index).pages()
    );
    let map = opened.store.shard_map();
    if map.is_sharded() {
        eprintln!(
            "redo-helper: this data directory is shard {map}: checking only the pages it owns"
        );
    }
    let mut sum = check::CheckSummary::default();
    if let Some(pgdata) = &args.pgdata {
        check::check_against_pgdata(&opened.store, pgdata, &mut sum);
    } else {
        sum.lsn = read(&opened.store.index).last_record_end;
    }
    check::check_history(&opened.store, args.samples, args.seed, &mut sum);
    if let Some(p) = &sum.first_problem {
        println!("first problem: {p}");
    }
    if let Some(l) = &sum.history_longest {
        println!("longest historical read: {l}");
    }
    println!("{}", sum.line());
    if sum.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
