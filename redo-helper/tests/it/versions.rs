//! PostgreSQL 16, 17 and 18 end to end (15 is what every other module runs): per version, a
//! cluster from `/opt/fpw_pushdown/pg/<major>` with full_page_writes off and
//! wal_consistency_checking = all, the helper bootstrapped (BASE_BACKUP) and streaming, a
//! mixed workload touching every resource manager the redo engine replays, then
//! - decoding equal to the server's own (`pg_walinspect`: every record's position, links,
//!   rmgr, type name and lengths, and every block reference);
//! - `verify`: 0 mismatches, 0 unreadable pages against the consistency images;
//! - `check`: every page the helper serves equals the data files after CHECKPOINT;
//! - and, in a second test per version, a crash with torn pages repaired to the untorn
//!   recovery's contents with amcheck clean (`repair::crash_tear_repair`).
//!
//! A version whose server is not installed fails the test (`scripts/setup.sh` installs them),
//! rather than passing without having run.

use crate::common::{PgCluster, TempDir, pg_command, server_installed};
use crate::redo_verify::{checkpoint_and_stop, run_verify_clean, start_helper};
use crate::support::run_check_clean;
use redo_helper::wal::{FileReaderOptions, Lsn, WalFileReader};
use std::collections::BTreeMap;

fn cluster(major: u32) -> PgCluster {
    assert!(
        server_installed(major),
        "PostgreSQL {major} is not installed under /opt/fpw_pushdown/pg (run scripts/setup.sh)"
    );
    PgCluster::start_version(
        major,
        &[],
        &[
            "listen_addresses = '127.0.0.1'",
            "wal_level = replica",
            "max_wal_senders = 10",
            "full_page_writes = off",
            "wal_consistency_checking = 'all'",
            "autovacuum = off",
            "shared_buffers = 64MB",
        ],
    )
}

/// A workload with records of every resource manager the redo engine replays (heap, heap2
/// pruning/freezing/visibility, btree, hash, gist, spgist, gin, brin, generic via bloom,
/// sequence, storage, database) and of the ones it only decodes (xact, standby, relmap,
/// logical message, XLOG).
fn workload(c: &PgCluster) {
    c.pgbench(&["-i", "-s", "1", "-q"]);
    c.pgbench(&["-n", "-c", "2", "-t", "60"]);
    c.sql("CREATE EXTENSION IF NOT EXISTS bloom");
    c.sql(
        "CREATE TABLE g (id int, h int, p point, b box, arr int[], pad text) \
         WITH (fillfactor = 80)",
    );
    c.sql("CREATE INDEX g_bt ON g (id)");
    c.sql("CREATE INDEX g_hash ON g USING hash (h)");
    c.sql("CREATE INDEX g_gist ON g USING gist (b)");
    c.sql("CREATE INDEX g_spg ON g USING spgist (p)");
    c.sql("CREATE INDEX g_gin ON g USING gin (arr)");
    c.sql("CREATE INDEX g_brin ON g USING brin (id) WITH (pages_per_range = 4)");
    c.sql("CREATE INDEX g_bloom ON g USING bloom (id, h)");
    c.sql(
        "INSERT INTO g SELECT i, i % 50, point(i % 97, i % 89), \
         box(point(i % 61, i % 59), point(i % 61 + 2, i % 59 + 3)), \
         ARRAY[i % 13, i % 17, i % 19], repeat('x', 40) FROM generate_series(1, 3500) i",
    );
    // HOT and non-HOT updates, deletes, then pruning, vacuuming, the visibility map and
    // freezing (17 and 18: the merged prune/freeze records of every reason).
    c.sql("UPDATE g SET pad = 'hot' WHERE id % 7 = 0");
    c.sql("UPDATE g SET h = h + 1, arr = arr || 5 WHERE id % 11 = 0");
    c.sql("DELETE FROM g WHERE id % 5 = 0");
    c.sql("SELECT count(*) FROM g WHERE pad = 'hot'");
    c.sql("VACUUM g");
    c.sql("VACUUM (FREEZE) g");
    c.sql("UPDATE g SET pad = 'after freeze' WHERE id % 31 = 1");
    // Index scans (not index-only: they fetch `pad`) mark the entries of deleted rows
    // LP_DEAD; inserts into those full pages then delete them (btree DELETE, hash
    // VACUUM_ONE_PAGE, often gist DELETE: the records 16 gave `isCatalogRel`).
    c.sql("DELETE FROM g WHERE id BETWEEN 1001 AND 2000");
    c.sql(
        "SET enable_seqscan = off; SET enable_bitmapscan = off; \
         SELECT sum(length(pad)) FROM g WHERE id BETWEEN 1001 AND 2000; \
         SELECT sum(length(pad)) FROM g WHERE h = 7; \
         SELECT sum(length(pad)) FROM g WHERE b && box(point(0, 0), point(70, 70))",
    );
    c.sql(
        "INSERT INTO g SELECT i, 7, point(i % 97, i % 89), \
         box(point(i % 61, i % 59), point(i % 61 + 2, i % 59 + 3)), ARRAY[1], 'again' \
         FROM generate_series(1001, 2000) i",
    );
    c.sql("DELETE FROM g WHERE id > 3000");
    c.sql("VACUUM g");
    // GiST DELETE for certain (g's boxes do not always fill a leaf holding dead entries), as
    // `gist.rs` makes it on 15: a buffered build leaves the point leaves about 30% full;
    // index scans mark every other row of x 2000..2600 LP_DEAD after its DELETE, and 2,000
    // new rows there fill those leaves, which gistplacetopage prunes before it would split.
    c.sql("CREATE TABLE gd (id int, p point) WITH (autovacuum_enabled = off)");
    crate::gin::copy_load(
        c,
        "gd",
        "SELECT g, point(g, g % 100) FROM generate_series(1, 20000) g",
    );
    c.sql("CREATE INDEX gd_p ON gd USING gist (p) WITH (buffering = on)");
    c.sql("DELETE FROM gd WHERE id BETWEEN 2000 AND 2600 AND id % 2 = 0");
    for _ in 0..2 {
        c.sql(
            "SET enable_seqscan = off; SET enable_bitmapscan = off; \
             SELECT sum(id) FROM gd WHERE p <@ box '((1990,0),(2610,100))'",
        );
    }
    crate::gin::copy_load(
        c,
        "gd",
        "SELECT g, point(2000 + g % 600, g % 100) FROM generate_series(30001, 32000) g",
    );
    // Copy (multi-insert), truncation, a dropped table, sequences.
    c.sql("CREATE TABLE cp (id int, note text)");
    c.sql("COPY cp (id) FROM PROGRAM 'seq 1 5000'");
    c.sql("TRUNCATE cp");
    c.sql("INSERT INTO cp SELECT g, 'again' FROM generate_series(1, 200) g");
    c.sql("CREATE TABLE tail (id int, pad text)");
    c.sql("INSERT INTO tail SELECT g, repeat('t', 100) FROM generate_series(1, 3000) g");
    c.sql("DELETE FROM tail WHERE id > 1000");
    c.sql("VACUUM tail");
    c.sql("CREATE TABLE dropme AS SELECT g AS id FROM generate_series(1, 1000) g");
    c.sql("DROP TABLE dropme");
    c.sql("CREATE SEQUENCE s");
    c.sql("SELECT count(nextval('s')) FROM generate_series(1, 100)");
    c.sql("SELECT setval('s', 1000)");
    // Btree items removed from deduplicated posting lists (VACUUM's updated tuples), leaf
    // pages emptied and deleted (MARK_PAGE_HALFDEAD, UNLINK_PAGE, META_CLEANUP), and once
    // a later VACUUM has put them in the free space map, reused by splits (REUSE_PAGE).
    c.sql("CREATE TABLE dup (k int, v int) WITH (autovacuum_enabled = off)");
    c.sql("CREATE INDEX dup_k ON dup (k)");
    c.sql("CREATE INDEX dup_v ON dup (v)");
    c.sql("INSERT INTO dup SELECT g % 10, g FROM generate_series(1, 10000) g");
    c.sql("DELETE FROM dup WHERE v % 3 = 0 OR v BETWEEN 2500 AND 7500");
    c.sql("VACUUM dup");
    c.sql("SELECT txid_current()");
    c.sql("SELECT txid_current()");
    c.sql("VACUUM dup");
    c.sql("INSERT INTO dup SELECT g % 10, 10000 + g FROM generate_series(1, 10000) g");
    // A speculative insertion confirmed (INSERT ... ON CONFLICT: HEAP_CONFIRM), then one
    // that conflicts.
    c.sql("CREATE TABLE upsert (id int PRIMARY KEY, n int)");
    for _ in 0..2 {
        c.sql("INSERT INTO upsert VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = upsert.n + 1");
    }
    // A database copied block by block in WAL (WAL_LOG) and one by file copy; a mapped
    // catalog rewritten (relmap); a logical message.
    c.sql("CREATE DATABASE d_wal_log");
    c.sql("CREATE DATABASE d_file_copy STRATEGY file_copy");
    c.sql("VACUUM FULL pg_class");
    c.sql("SELECT pg_logical_emit_message(true, 'versions', 'hello')");
}

/// One record as both sides describe it: position, links, rmgr, type name and lengths.
type RecordRow = (String, String, String, u32, String, String, u32, u32, u32);
/// One block reference: record position, id, tablespace, database, relfilenode, fork,
/// block, data length, image length.
type BlockRow = (String, u8, u32, u32, u32, u8, u32, usize, u32);

/// "0/1A2B3C" as pg_walinspect prints it (`%X/%X`; 18 zero-pads the low half).
fn lsn_text(lsn: Lsn) -> String {
    format!("{:X}/{:X}", lsn.0 >> 32, lsn.0 as u32)
}

/// Normalises pg_walinspect's LSN text to `%X/%X`.
fn norm_lsn(s: &str) -> String {
    let (hi, lo) = s.split_once('/').unwrap_or((s, "0"));
    let hi = u32::from_str_radix(hi, 16).unwrap_or(u32::MAX);
    let lo = u32::from_str_radix(lo, 16).unwrap_or(u32::MAX);
    format!("{hi:X}/{lo:X}")
}

/// Every record and block reference between `start` and `end` as our decoder sees them in
/// the cluster's pg_wal, against `pg_get_wal_records_info` / `pg_get_wal_block_info`.
fn assert_decoding_matches_pg_walinspect(c: &PgCluster, start: Lsn, end: Lsn) -> usize {
    let opts = FileReaderOptions {
        end: Some(end),
        ..Default::default()
    };
    let mut reader = WalFileReader::open(c.wal_dir(), start, opts).expect("open pg_wal");
    let mut ours: Vec<RecordRow> = Vec::new();
    let mut our_blocks: Vec<BlockRow> = Vec::new();
    // Each record's rmgr description (`rm_desc`, as `pg_waldump` prints after the type).
    let mut our_descs: Vec<(String, String, String)> = Vec::new();
    // The `waldump --stats=record` table's counts.
    let mut stats = redo_helper::wal::stats::WalStats::default();
    while let Some(rec) = reader.next_record().expect("decode") {
        if rec.lsn < start {
            continue;
        }
        stats.add(&rec);
        let lsn = lsn_text(rec.lsn);
        let mut desc = String::new();
        redo_helper::wal::desc::describe(&rec, &mut desc);
        our_descs.push((
            lsn.clone(),
            format!(
                "{}/{}",
                rec.rmgr().name(),
                redo_helper::wal::rmgr::record_type_name_of(rec.version, rec.rmid(), rec.info())
            ),
            desc,
        ));
        ours.push((
            lsn.clone(),
            lsn_text(rec.end_lsn),
            lsn_text(rec.prev()),
            rec.xid(),
            rec.rmgr().name().into_owned(),
            redo_helper::wal::rmgr::record_type_name_of(rec.version, rec.rmid(), rec.info())
                .into_owned(),
            rec.total_len(),
            rec.main_data().len() as u32,
            rec.fpi_len(),
        ));
        for b in rec.blocks() {
            our_blocks.push((
                lsn.clone(),
                b.id,
                b.rel.spc_oid,
                b.rel.db_oid,
                b.rel.rel_number,
                b.fork.0,
                b.block,
                rec.block_data(b).len(),
                b.image.map_or(0, |i| u32::from(i.length)),
            ));
        }
    }
    let (s, e) = (lsn_text(start), lsn_text(end));
    let theirs: Vec<RecordRow> = c
        .sql(&format!(
            "SELECT start_lsn, end_lsn, prev_lsn, xid, resource_manager, record_type, \
             record_length, main_data_length, fpi_length \
             FROM pg_get_wal_records_info('{s}', '{e}')"
        ))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 9, "pg_walinspect row {l}");
            let n = |i: usize| f[i].parse::<u32>().unwrap_or(u32::MAX);
            (
                norm_lsn(f[0]),
                norm_lsn(f[1]),
                norm_lsn(f[2]),
                n(3),
                f[4].to_string(),
                f[5].to_string(),
                n(6),
                n(7),
                n(8),
            )
        })
        .collect();
    let their_blocks: Vec<BlockRow> = c
        .sql(&format!(
            "SELECT start_lsn, block_id, reltablespace, reldatabase, relfilenode, \
             relforknumber, relblocknumber, block_data_length, block_fpi_length \
             FROM pg_get_wal_block_info('{s}', '{e}', false)"
        ))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            assert_eq!(f.len(), 9, "pg_walinspect block row {l}");
            let n = |i: usize| f[i].parse::<u32>().unwrap_or(u32::MAX);
            (
                norm_lsn(f[0]),
                n(1) as u8,
                n(2),
                n(3),
                n(4),
                n(5) as u8,
                n(6),
                n(7) as usize,
                n(8),
            )
        })
        .collect();
    assert!(ours.len() > 1000, "only {} records decoded", ours.len());
    assert_descriptions_match(c, &s, &e, &our_descs);
    // Per record type statistics under the version's names (17 renamed Heap2's prune
    // records): the counts of `pg_get_wal_stats`, rows with records only.
    let our_stats: Vec<(String, u64)> = stats
        .render(true)
        .lines()
        .skip(3)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?;
            let n = f.next()?.parse().ok()?;
            name.contains('/').then(|| (name.to_string(), n))
        })
        .collect();
    let their_stats: Vec<(String, u64)> = c
        .sql(&format!(
            "SELECT \"resource_manager/record_type\", count \
             FROM pg_get_wal_stats('{s}', '{e}', true) WHERE count > 0"
        ))
        .lines()
        .filter_map(|l| {
            let (name, n) = l.split_once('|')?;
            Some((name.to_string(), n.parse().ok()?))
        })
        .collect();
    assert!(
        our_stats.len() > 20,
        "only {} record types counted",
        our_stats.len()
    );
    assert_eq!(
        our_stats, their_stats,
        "--stats=record differs from pg_get_wal_stats"
    );
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "record {i} differs (ours, pg_walinspect)");
    }
    assert_eq!(ours.len(), theirs.len(), "record counts differ");
    for (a, b) in our_blocks.iter().zip(&their_blocks) {
        assert_eq!(a, b, "block reference differs (ours, pg_walinspect)");
    }
    assert_eq!(our_blocks.len(), their_blocks.len(), "block counts differ");
    // Every rmgr of the workload appears (a workload that lost one would prove less).
    let mut per_rmgr: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &ours {
        *per_rmgr.entry(r.4.as_str()).or_default() += 1;
    }
    for rmgr in [
        "XLOG",
        "Transaction",
        "Storage",
        "Database",
        "RelMap",
        "Standby",
        "Heap2",
        "Heap",
        "Btree",
        "Hash",
        "Gin",
        "Gist",
        "Sequence",
        "SPGist",
        "BRIN",
        "Generic",
        "LogicalMessage",
    ] {
        assert!(
            per_rmgr.contains_key(rmgr),
            "no {rmgr} record in the workload: {per_rmgr:?}"
        );
    }
    eprintln!("decoding parity: {} records, {per_rmgr:?}", ours.len());
    ours.len()
}

/// Every record's description equals the server's own `rm_desc` (`pg_get_wal_records_info`'s
/// `description`: the text `pg_waldump` of that version prints after the record type).
/// Mismatches are tallied per record type, with the first of each, before failing.
fn assert_descriptions_match(c: &PgCluster, s: &str, e: &str, ours: &[(String, String, String)]) {
    let out = c.sql(&format!(
        "SELECT start_lsn, replace(description, E'\\n', '\\n') \
         FROM pg_get_wal_records_info('{s}', '{e}')"
    ));
    let theirs: Vec<(String, String)> = out
        .lines()
        .map(|l| {
            let (lsn, desc) = l.split_once('|').unwrap_or((l, ""));
            (norm_lsn(lsn), desc.to_string())
        })
        .collect();
    assert_eq!(ours.len(), theirs.len(), "description counts differ");
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, kind, _) in ours {
        *kinds.entry(kind.as_str()).or_default() += 1;
    }
    eprintln!("descriptions compared: {kinds:?}");
    let mut mismatches: BTreeMap<&str, (usize, String)> = BTreeMap::new();
    for ((lsn, kind, mine), (their_lsn, desc)) in ours.iter().zip(&theirs) {
        assert_eq!(lsn, their_lsn);
        if backend_timestamps(mine) != *desc {
            let m = mismatches
                .entry(kind.as_str())
                .or_insert_with(|| (0, format!("{lsn}\n    ours:   {mine}\n    theirs: {desc}")));
            m.0 += 1;
        }
    }
    let report: Vec<String> = mismatches
        .iter()
        .map(|(kind, (n, first))| format!("{kind}: {n} records, first at {first}"))
        .collect();
    assert!(
        report.is_empty(),
        "{} record types described unlike the server's rm_desc:\n{}",
        report.len(),
        report.join("\n")
    );
}

/// Our timestamps (`... 14:45:43.875100 UTC`, pg_waldump's frontend format) as the server
/// prints them in UTC (`... 14:45:43.8751+00`: trailing zeros of the fraction dropped).
fn backend_timestamps(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(" UTC") {
        let mut head = rest[..i].to_string();
        if let Some(dot) = head.rfind('.')
            && head.len() - dot == 7
            && head[dot + 1..].bytes().all(|b| b.is_ascii_digit())
        {
            while head.ends_with('0') {
                head.pop();
            }
            if head.ends_with('.') {
                head.pop();
            }
        }
        out.push_str(&head);
        out.push_str("+00");
        rest = &rest[i + 4..];
    }
    out.push_str(rest);
    out
}

/// Stream, decode (parity with pg_walinspect), verify and check on PostgreSQL `major`.
pub(crate) fn stream_verify_check(major: u32) {
    let c = cluster(major);
    c.sql("CREATE EXTENSION pg_walinspect");
    // Its upgrade script (1.0 to 1.1) leaves dead pg_proc rows: pruned now, not by a
    // catalog lookup racing the final CHECKPOINT (the data files would then be older than
    // the helper's pages).
    c.sql("VACUUM pg_proc");
    let dir = TempDir::new(&format!("versions-{major}"));
    let h = start_helper(&c, &dir);
    let start = Lsn(crate::support::lsn(
        &c.sql("SELECT pg_current_wal_insert_lsn()"),
    ));
    workload(&c);
    // Parity first: pg_walinspect's queries must not prune catalog pages after the
    // CHECKPOINT the data-file comparison relies on.
    let end = Lsn(crate::support::lsn(
        &c.sql("SELECT pg_current_wal_flush_lsn()"),
    ));
    assert_decoding_matches_pg_walinspect(&c, start, end);
    checkpoint_and_stop(&c, h);
    let helper = dir.path().join("helper");
    let meta = std::fs::read_to_string(helper.join("helper.json")).expect("helper.json");
    assert!(
        meta.contains(&format!("\"pg_version\": {major}")),
        "helper.json names the version: {meta}"
    );
    let run = run_verify_clean(&helper, &c.data);
    assert!(run.records > 5_000, "{}", run.stdout);
    // The records whose layout 16 or 17 changed, replayed and compared.
    let changed: &[&str] = if major >= 17 {
        &[
            "Heap2/PRUNE_VACUUM_SCAN",
            "Heap2/PRUNE_VACUUM_CLEANUP",
            "XLOG/CHECKPOINT_REDO",
        ]
    } else {
        &["Heap2/PRUNE", "Heap2/VACUUM", "Heap2/FREEZE_PAGE"]
    };
    run.every_type_replayed(changed);
    run.every_type_replayed(&[
        "Btree/DELETE",
        "Hash/VACUUM_ONE_PAGE",
        "SPGist/VACUUM_REDIRECT",
        "Gist/DELETE",
    ]);
    run.every_type_replayed(&[
        "Heap2/VISIBLE",
        "Heap2/MULTI_INSERT",
        "Btree/INSERT_LEAF",
        "Hash/INSERT",
        "Gist/PAGE_UPDATE",
        "SPGist/ADD_LEAF",
        "Gin/INSERT",
        "BRIN/INSERT",
        "Generic/Generic",
        "Sequence/LOG",
        "Storage/TRUNCATE",
    ]);
    run_check_clean(&helper, &c.data, 500);
}

#[test]
fn pg16_stream_decode_verify_check() {
    stream_verify_check(16);
}

#[test]
fn pg17_stream_decode_verify_check() {
    stream_verify_check(17);
}

#[test]
fn pg18_stream_decode_verify_check() {
    stream_verify_check(18);
}

#[test]
#[ignore = "time: make test-all"]
fn pg16_repair_torn_pages() {
    crate::repair::crash_tear_repair(16, true);
}

#[test]
fn pg17_repair_torn_pages() {
    crate::repair::crash_tear_repair(17, true);
}

#[test]
#[ignore = "time: make test-all"]
fn pg18_repair_torn_pages() {
    crate::repair::crash_tear_repair(18, true);
}

/// A server of another major version than the helper's data directory follows is refused
/// before anything is streamed; an unknown one before any slot is created.
#[test]
fn version_is_refused_before_the_slot() {
    let c = PgCluster::start_fpw_off_version(17, &[]);
    let dir = TempDir::new("versions-refuse");
    let helper = dir.path().join("helper");
    // A directory bootstrapped from 15 (helper.json says so) pointed at a 17 server.
    std::fs::create_dir_all(&helper).expect("mkdir");
    // Private, as the helper requires of a directory with contents.
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod 0700");
    let meta = "{\"system_identifier\": 1, \"timeline\": 1, \"segment_size\": 16777216, \
         \"slot\": \"fpw_pushdown\", \"backup_start_lsn\": \"0/2000028\", \
         \"backup_end_lsn\": \"0/2000100\", \"created_unix\": 0, \"pg_version\": 15}";
    std::fs::write(helper.join("helper.json"), meta).expect("write helper.json");
    let mut h = crate::support::HelperProcess::spawn(
        &c.conninfo(),
        &helper,
        &dir.path().join("helper.log"),
    );
    let (_, log) = h.wait_exit(std::time::Duration::from_secs(60));
    assert!(
        log.contains("the server runs PostgreSQL 17") && log.contains("follows PostgreSQL 15"),
        "{log}"
    );
    let slots = pg_command("psql")
        .args(["-X", "-A", "-t", "-h"])
        .arg(&c.root)
        .args([
            "-p",
            &c.port.to_string(),
            "-c",
            "SELECT count(*) FROM pg_replication_slots",
            "postgres",
        ])
        .output()
        .expect("psql");
    assert_eq!(String::from_utf8_lossy(&slots.stdout).trim(), "0");
}

/// Retention, image generation and GetPage over HTTP on PostgreSQL 17: a 32 MB history
/// under pgbench moves its horizon and deletes segments; pages are then served (from the
/// retained images) equal to the whole chain, and `check` is clean after CHECKPOINT.
#[test]
fn pg17_retention_images_and_getpage() {
    use crate::support::{HelperProcess, http, lsn, status_lsn};
    use std::time::Duration;
    let c = PgCluster::start_fpw_off_version(17, &[]);
    c.pgbench(&["-i", "-s", "1", "-q"]);
    let tmp = TempDir::new("versions-retention");
    let dir = tmp.path().join("helper");
    let mut h = HelperProcess::spawn_with(
        &c.conninfo(),
        &dir,
        &tmp.path().join("helper.log"),
        &[
            "--retain",
            "32MB",
            "--image-threshold",
            "8",
            "--retention-interval-ms",
            "300",
        ],
    );
    h.wait_status("streaming", Duration::from_secs(120), |s| {
        s["state"] == "streaming"
    });
    for _ in 0..5 {
        c.pgbench(&["-c", "2", "-T", "2", "-n"]);
        c.sql("SELECT pg_switch_wal()");
    }
    let now = lsn(&c.sql("SELECT pg_current_wal_flush_lsn()"));
    h.wait_status("retention pass", Duration::from_secs(180), |s| {
        status_lsn(s, "decoded_lsn") >= now
            && s["retention"]["segments_removed_total"]
                .as_u64()
                .unwrap_or(0)
                > 0
    });
    for rel in ["pgbench_branches", "pgbench_accounts"] {
        let page = format!("/page/{}/main/0", c.rel_path(rel));
        let served = http(&h.listen, "GET", &format!("{page}?cache=none")).expect("GET");
        assert_eq!(
            served.status,
            200,
            "{page}: {}",
            String::from_utf8_lossy(&served.body)
        );
        let full = http(&h.listen, "GET", &format!("{page}?images=none")).expect("GET");
        assert_eq!(full.status, 200, "{}", String::from_utf8_lossy(&full.body));
        assert!(
            served.body == full.body,
            "{page}: served differs from the chain"
        );
    }
    crate::redo_verify::checkpoint_and_stop(&c, h);
    let check = run_check_clean(&dir, &c.data, 50);
    assert!(
        check.num(" served from generated images") > 0,
        "{}",
        check.line
    );
}
