//! Parity with PostgreSQL 15's `pg_waldump`: real WAL from throwaway clusters (pgbench, DDL,
//! vacuum, index builds, TOAST, sequences, truncate, subtransactions, CREATE DATABASE,
//! `wal_consistency_checking = all`, `wal_compression` = pglz/lz4/zstd, data checksums,
//! `full_page_writes = off` with hint logging, a record spanning segments) is decoded by our
//! reader and by pg_waldump, and every record is compared field by field: LSN, prev, rmgr,
//! record type, lengths, xid, block references (relation, fork, block, image, applied or
//! verification-only) and, for the rmgrs we describe, the description text.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::{PgCluster, TempDir, pg_waldump};
use redo_helper::wal::desc::{describe, has_pg_waldump_desc};
use redo_helper::wal::rmgr::record_type_name;
use redo_helper::wal::{
    BLCKSZ, CompressionMethod, DecodedRecord, FileReaderOptions, Lsn, WalError, WalFileReader,
};

/// The fields of one pg_waldump line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    rmgr: String,
    rec_len: u32,
    tot_len: u32,
    xid: u32,
    lsn: String,
    prev: String,
    rtype: String,
    desc: String,
    blocks: Vec<String>,
}

fn parse_pg_line(l: &str) -> Line {
    let field = |key: &str| -> &str {
        let i = l.find(key).unwrap_or_else(|| panic!("no {key:?} in {l}")) + key.len();
        let rest = &l[i..];
        rest[..rest.find(',').unwrap_or(rest.len())].trim()
    };
    let rmgr = l["rmgr: ".len()..l.find(" len (rec/tot)").unwrap()]
        .trim()
        .to_string();
    let lens = field("len (rec/tot):");
    let (rec_len, tot_len) = lens.split_once('/').unwrap();
    let desc_all = &l[l.find("desc: ").unwrap() + 6..];
    let (head, blocks) = match desc_all.find(", blkref #") {
        Some(i) => (&desc_all[..i], &desc_all[i + 2..]),
        None => (desc_all, ""),
    };
    let (rtype, desc) = if head.starts_with("UNKNOWN (") {
        let e = head.find(')').unwrap() + 1;
        (
            &head[..e],
            head[e..].strip_prefix(' ').unwrap_or(&head[e..]),
        )
    } else {
        head.split_once(' ').unwrap_or((head, ""))
    };
    Line {
        rmgr,
        rec_len: rec_len.trim().parse().unwrap(),
        tot_len: tot_len.trim().parse().unwrap(),
        xid: field("tx:").parse().unwrap(),
        lsn: field("lsn:").to_string(),
        prev: field("prev").to_string(),
        rtype: rtype.to_string(),
        desc: desc.to_string(),
        blocks: if blocks.is_empty() {
            vec![]
        } else {
            blocks.split(", ").map(str::to_string).collect()
        },
    }
}

/// Our view of a record, built from the decoded structure (not from our text output).
fn our_line(rec: &DecodedRecord) -> Line {
    let mut desc = String::new();
    describe(rec, &mut desc);
    Line {
        rmgr: rec.rmgr().name().into_owned(),
        rec_len: rec.rec_len(),
        tot_len: rec.total_len(),
        xid: rec.xid(),
        lsn: rec.lsn.to_string(),
        prev: rec.prev().to_string(),
        rtype: record_type_name(rec.rmid(), rec.info()).into_owned(),
        desc,
        blocks: rec
            .blocks()
            .iter()
            .map(|b| {
                let fork = if b.fork.0 == 0 {
                    String::new()
                } else {
                    format!(" fork {}", b.fork.name())
                };
                let img = match b.image {
                    None => "",
                    Some(i) if i.apply() => " FPW",
                    Some(_) => " FPW for WAL verification",
                };
                format!("blkref #{}: rel {}{fork} blk {}{img}", b.id, b.rel, b.block)
            })
            .collect(),
    }
}

#[derive(Default, Debug)]
struct Tally {
    records: usize,
    desc_compared: usize,
    images: BTreeMap<String, usize>,
    spanning_segments: usize,
    switch_records: usize,
    /// RUNNING_XACTS records listing subtransactions, and those whose subtransactions
    /// overflowed.
    running_xacts_subxacts: usize,
    running_xacts_overflowed: usize,
    /// PREPARE TRANSACTION records (with a replication origin), and commit-timestamp pages
    /// zeroed.
    prepares: usize,
    prepares_with_origin: usize,
    commit_ts_zeropages: usize,
}

/// Sanity of a restored page: standard page header bounds (`bufpage.h`).
fn page_header_sane(p: &[u8; BLCKSZ]) -> bool {
    if p.iter().all(|&b| b == 0) {
        return true;
    }
    let u16at = |o: usize| u16::from_le_bytes([p[o], p[o + 1]]) as usize;
    let (lower, upper, special) = (u16at(12), u16at(14), u16at(16));
    lower <= upper && upper <= special && special <= BLCKSZ
}

fn compare_dir(dir: &Path, tally: &mut Tally) {
    // Given a directory and a start LSN, pg_waldump learns the segment size from whichever
    // WAL file readdir() lists first, and fails on a zero-filled one preallocated past the
    // end of WAL: such files (first page all zeros: never written) are removed first.
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let is_segment = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()));
        if is_segment {
            let bytes = std::fs::read(&path).unwrap();
            if bytes.iter().take(BLCKSZ).all(|&b| b == 0) {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
    let (pg_lines, pg_err) = pg_waldump(dir, &["-s", "0/1000000"]);
    assert!(
        pg_err.contains("invalid record length") || pg_err.contains("wanted 24, got 0"),
        "pg_waldump should stop at the end of WAL, got: {pg_err}"
    );
    let mut reader =
        WalFileReader::open(dir, Lsn(0x1000000), FileReaderOptions::default()).unwrap();
    // The same files mapped and decoded in place (`wal::mapped`, what `waldump` and `verify`
    // read with): every record must be the same, bytes, blocks and main data.
    let mut mapped = WalFileReader::open(
        dir,
        Lsn(0x1000000),
        FileReaderOptions {
            map_files: true,
            read_ahead: true,
            ..Default::default()
        },
    )
    .unwrap();
    let seg = reader.segment_size() as u64;
    let mut page = [0u8; BLCKSZ];
    let mut n = 0usize;
    let mut mismatches = Vec::new();
    loop {
        let rec = match reader.next_record() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                assert!(e.is_end_of_wal(), "decoder error: {e}");
                assert!(mapped.next_record().is_err_and(|m| m.is_end_of_wal()));
                break;
            }
        };
        let in_place = mapped.next_record().unwrap().unwrap();
        assert_eq!(
            (in_place.lsn, in_place.end_lsn, in_place.raw()),
            (rec.lsn, rec.end_lsn, rec.raw())
        );
        assert_eq!(in_place.blocks(), rec.blocks(), "at {}", rec.lsn);
        assert_eq!(in_place.main_data(), rec.main_data(), "at {}", rec.lsn);
        let Some(pg) = pg_lines.get(n) else {
            panic!(
                "we decoded more records than pg_waldump: extra record at {}",
                rec.lsn
            );
        };
        let theirs = parse_pg_line(pg);
        let mut ours = our_line(&rec);
        if has_pg_waldump_desc(rec.rmid()) {
            tally.desc_compared += 1;
        } else {
            ours.desc = theirs.desc.clone();
        }
        if ours != theirs && mismatches.len() < 20 {
            mismatches.push(format!(
                "pg_waldump: {pg}\nours:       {ours:?}\ntheirs:     {theirs:?}"
            ));
        }
        for b in rec.blocks() {
            if let Some(img) = b.image {
                let kind = match img.compression() {
                    None => "none".to_string(),
                    Some(CompressionMethod::Pglz) => "pglz".into(),
                    Some(CompressionMethod::Lz4) => "lz4".into(),
                    Some(CompressionMethod::Zstd) => "zstd".into(),
                };
                *tally.images.entry(kind).or_default() += 1;
                assert!(
                    rec.restore_block_image(b, &mut page).unwrap(),
                    "image at {}",
                    rec.lsn
                );
                assert!(
                    page_header_sane(&page),
                    "restored page of block {} at {} is not a page",
                    b.id,
                    rec.lsn
                );
            }
        }
        if rec.lsn.0 / seg != (rec.lsn.0 + rec.total_len() as u64 - 1) / seg {
            tally.spanning_segments += 1;
        }
        if rec.rmid() == 0 && rec.rmgr_info() == 0x40 {
            tally.switch_records += 1;
        }
        if rec.rmid() == redo_helper::wal::rmgr::RM_STANDBY_ID
            && let Ok(redo_helper::wal::rmgr::standby::StandbyRecord::RunningXacts {
                subxcnt,
                subxid_overflow,
                ..
            }) = redo_helper::wal::rmgr::standby::parse(&rec)
        {
            tally.running_xacts_subxacts += usize::from(subxcnt > 0);
            tally.running_xacts_overflowed += usize::from(subxid_overflow);
        }
        let rmgr = |id: u8, info: u8, mask: u8| rec.rmid() == id && rec.rmgr_info() & mask == info;
        let prepare = rmgr(redo_helper::wal::rmgr::RM_XACT_ID, 0x10, 0x70);
        tally.prepares += usize::from(prepare);
        tally.prepares_with_origin += usize::from(prepare && rec.origin.is_some());
        tally.commit_ts_zeropages +=
            usize::from(rmgr(redo_helper::wal::rmgr::RM_COMMIT_TS_ID, 0x00, 0xF0));
        n += 1;
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches, first ones:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert_eq!(
        n,
        pg_lines.len(),
        "pg_waldump printed {} records, we decoded {n}",
        pg_lines.len()
    );
    tally.records += n;
}

const WORKLOAD: &[&str] = &[
    "CREATE TABLE toasty (id serial PRIMARY KEY, body text, n int)",
    "ALTER TABLE toasty ALTER COLUMN body SET STORAGE EXTERNAL",
    "INSERT INTO toasty (body, n) SELECT string_agg(md5(random()::text), ''), g FROM generate_series(1, 40) g, generate_series(1, 100) x GROUP BY g",
    "CREATE INDEX toasty_n ON toasty (n)",
    "UPDATE toasty SET n = n + 1 WHERE id % 3 = 0",
    "DELETE FROM toasty WHERE id % 5 = 0",
    "CREATE SEQUENCE seq1",
    "SELECT count(nextval('seq1')) FROM generate_series(1, 200)",
    "VACUUM toasty",
    "CREATE TABLE t2 AS SELECT g AS a, md5(g::text) AS b FROM generate_series(1, 5000) g",
    "CREATE INDEX t2_b ON t2 (b)",
    // Hash: metapage and bitmap page init (on an empty and on a loaded table), inserts,
    // bucket splits (fill factor 10), overflow pages (three keys), VACUUM (delete, squeeze,
    // metapage update), and new rows into recycled overflow pages.
    "CREATE TABLE ht (id int, k int)",
    "CREATE INDEX ht_k ON ht USING hash (k) WITH (fillfactor = 10)",
    "INSERT INTO ht SELECT g, g FROM generate_series(1, 3000) g",
    "CREATE INDEX ht_dup ON ht USING hash ((id % 3))",
    "DELETE FROM ht WHERE id % 2 = 0",
    "VACUUM ht",
    "INSERT INTO ht SELECT g, g FROM generate_series(3001, 3600) g",
    "DROP TABLE ht",
    // BRIN: CREATE_INDEX, REVMAP_EXTEND, INSERT(+INIT), SAMEPAGE_UPDATE, DESUMMARIZE.
    "CREATE INDEX t2_a_brin ON t2 USING brin (a) WITH (pages_per_range = 2)",
    "UPDATE t2 SET a = -a WHERE a % 97 = 1",
    "SELECT brin_desummarize_range('t2_a_brin', 0)",
    "SELECT brin_summarize_new_values('t2_a_brin')",
    // GIN: entry and posting-tree inserts (with leaf recompression actions), splits, a
    // pending list and its cleanup, vacuum of entry and posting-tree leaves.
    "CREATE TABLE gt (id int, k int[])",
    "CREATE INDEX gt_k ON gt USING gin (k) WITH (fastupdate = off)",
    "CREATE INDEX gt_fast ON gt USING gin (k) WITH (fastupdate = on, gin_pending_list_limit = 64)",
    "INSERT INTO gt SELECT g, ARRAY[g % 2, g] FROM generate_series(1, 3000) g",
    "DELETE FROM gt WHERE id % 3 = 0",
    "VACUUM gt",
    "DROP TABLE gt",
    // GiST: inserts with leaf and root splits, killed tuples pruned by inserts into full
    // leaves (DELETE), leaves emptied by VACUUM (PAGE_DELETE) and recycled (PAGE_REUSE).
    "CREATE TABLE gst (id int, p point)",
    "CREATE INDEX gst_p ON gst USING gist (p)",
    "INSERT INTO gst SELECT g, point(g, g % 10) FROM generate_series(1, 1500) g",
    "DELETE FROM gst WHERE id BETWEEN 100 AND 300 AND id % 2 = 0",
    "SET enable_seqscan = off; SET enable_bitmapscan = off; \
     SELECT sum(id) FROM gst WHERE p <@ box '((90,0),(310,10))'",
    "INSERT INTO gst SELECT g, point(100 + g % 200, g % 10) FROM generate_series(1501, 1900) g",
    "DELETE FROM gst WHERE id BETWEEN 500 AND 1300",
    "VACUUM gst",
    "SELECT txid_current()",
    "VACUUM gst",
    "INSERT INTO gst SELECT g, point(g, g % 10) FROM generate_series(1901, 2700) g",
    "DROP TABLE gst",
    // Btree: items removed from deduplicated posting lists, leaves emptied and deleted
    // (MARK_PAGE_HALFDEAD, UNLINK_PAGE, META_CLEANUP) and reused by splits (REUSE_PAGE);
    // a confirmed speculative insertion (HEAP_CONFIRM).
    "CREATE TABLE dup (k int, v int) WITH (autovacuum_enabled = off)",
    "CREATE INDEX dup_k ON dup (k)",
    "CREATE INDEX dup_v ON dup (v)",
    "INSERT INTO dup SELECT g % 10, g FROM generate_series(1, 10000) g",
    "DELETE FROM dup WHERE v % 3 = 0 OR v BETWEEN 2500 AND 7500",
    "VACUUM dup",
    "SELECT txid_current()",
    "SELECT txid_current()",
    "VACUUM dup",
    "INSERT INTO dup SELECT g % 10, 10000 + g FROM generate_series(1, 10000) g",
    "DROP TABLE dup",
    "CREATE TABLE upsert (id int PRIMARY KEY, n int)",
    "INSERT INTO upsert VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = upsert.n + 1",
    "INSERT INTO upsert VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = upsert.n + 1",
    "DROP TABLE upsert",
    // SP-GiST: radix text (prefixes split by diverging values, nodes added, inner tuples
    // moved), quad points, NULLs in the nulls tree, root splits, moved chains, vacuum of
    // leaves, of redirects and of a root that is still a leaf.
    "CREATE TABLE spt (id int, t text, p point)",
    "CREATE INDEX spt_t ON spt USING spgist (t)",
    "CREATE INDEX spt_p ON spt USING spgist (p)",
    "INSERT INTO spt SELECT g, 'k' || (g % 20) || '/' || chr(97 + g % 3) || md5(g::text), \
     point(g % 100, g / 100) FROM generate_series(1, 2000) g",
    "INSERT INTO spt SELECT g, 'https://www.example.com/' || md5(g::text), \
     point(50 + g % 10 * 0.01, 5) FROM generate_series(2001, 2600) g",
    "INSERT INTO spt SELECT g, CASE WHEN g % 2 = 0 THEN 'https://www.exbmple.com/' || g \
     ELSE 'k' || (g % 20) || '/' || chr(40 + (g / 20) % 80) || (g % 7) END, \
     point(50 + g % 10 * 0.01, 5) FROM generate_series(2601, 4000) g",
    "INSERT INTO spt (id) SELECT generate_series(4001, 4500)",
    "DELETE FROM spt WHERE id % 4 = 0 OR id BETWEEN 1000 AND 1500",
    "VACUUM spt",
    "SELECT txid_current()",
    "VACUUM spt",
    "INSERT INTO spt SELECT g, 'k' || (g % 20) || '/' || chr(97 + g % 3) || md5(g::text), \
     point(g % 100, g / 100) FROM generate_series(1000, 1300) g",
    "CREATE TABLE spr (t text)",
    "CREATE INDEX spr_t ON spr USING spgist (t)",
    "INSERT INTO spr SELECT 'v' || g FROM generate_series(1, 40) g",
    "DELETE FROM spr WHERE t LIKE '%3'",
    "VACUUM spr",
    "DROP TABLE spt",
    "DROP TABLE spr",
    "DELETE FROM t2 WHERE a % 2 = 0",
    "VACUUM (FREEZE) t2",
    "TRUNCATE t2",
    "INSERT INTO t2 SELECT g, md5(g::text) FROM generate_series(1, 1000) g",
    "VACUUM FULL t2",
    "CLUSTER toasty USING toasty_pkey",
    "DO $$ BEGIN FOR i IN 1..80 LOOP BEGIN INSERT INTO t2 VALUES (i, 'sub'); EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$",
    "DROP TABLE t2",
    "DROP TABLE toasty",
    "DROP SEQUENCE seq1",
];

fn run_workload(c: &PgCluster) {
    for sql in WORKLOAD {
        c.sql(sql);
    }
}

/// PREPARE records with what the second phase will do: relations to drop at commit (a
/// dropped table) and at abort (a created one), their statistics, subtransactions and
/// invalidations; one committed, one rolled back.
fn prepared_transactions(c: &PgCluster) {
    c.sql("CREATE TABLE prep_old (i int)");
    c.sql("INSERT INTO prep_old VALUES (1)");
    c.sql("CREATE TABLE prep_old2 (i int)");
    for (gid, end) in [
        ("p1", "COMMIT PREPARED 'p1'"),
        ("p2", "ROLLBACK PREPARED 'p2'"),
    ] {
        let old = if gid == "p1" { "prep_old" } else { "prep_old2" };
        c.sql(&format!(
            "BEGIN; CREATE TABLE prep_{gid} (i int); INSERT INTO prep_{gid} VALUES (1); \
             SAVEPOINT s1; INSERT INTO prep_{gid} VALUES (2); RELEASE s1; DROP TABLE {old}; \
             PREPARE TRANSACTION '{gid}'"
        ));
        c.sql(end);
    }
    // One prepared under a replication origin: 15 prints it after the invalidations.
    c.sql("SELECT pg_replication_origin_create('parity_origin')");
    c.sql(
        "SELECT pg_replication_origin_session_setup('parity_origin'); BEGIN; \
         SELECT pg_replication_origin_xact_setup('0/1234', now()); \
         CREATE TABLE prep_o (i int); PREPARE TRANSACTION 'po'",
    );
    c.sql("COMMIT PREPARED 'po'");
    c.sql("DROP TABLE IF EXISTS prep_p1, prep_p2, prep_old2, prep_o");
}

/// RUNNING_XACTS records of a transaction that holds subtransactions: 5 (listed from 16 on,
/// not by 15) and 80 (more than a backend caches: overflowed, which 15 and 16 word
/// differently). A checkpoint logs the running transactions (`LogStandbySnapshot`) while
/// the transaction waits; it is then cancelled (an abort with subtransactions).
fn running_xacts_with_subtransactions(c: &PgCluster) {
    c.sql("CREATE TABLE subx (i int)");
    for n in [5usize, 80] {
        let body = format!(
            "BEGIN; DO $$ BEGIN FOR i IN 1..{n} LOOP BEGIN INSERT INTO subx VALUES (i); \
             EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$; \
             SELECT pg_sleep(120); COMMIT;"
        );
        let mut child = crate::common::pg_command("psql")
            .args(["-X", "-q", "-d", "postgres", "-h"])
            .arg(&c.root)
            .args(["-p", &c.port.to_string(), "-c", &body])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("psql");
        // The DO is done once the session sleeps.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while c.sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'") != "1" {
            assert!(
                std::time::Instant::now() < deadline,
                "the transaction with {n} subtransactions does not sleep"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        c.sql("CHECKPOINT");
        c.sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'BEGIN; DO%'");
        let _ = child.wait();
    }
    c.sql("DROP TABLE subx");
}

#[test]
fn waldump_parity_with_pg_waldump() {
    let mut tally = Tally::default();

    // Cluster 1: data checksums, every block imaged for consistency checking, the three
    // compression methods in turn, a record spanning segments and a WAL switch.
    {
        let mut c = PgCluster::start(
            &["-k"],
            &[
                "wal_consistency_checking = 'all'",
                "wal_compression = pglz",
                "wal_level = logical",
                "max_prepared_transactions = 4",
                "track_commit_timestamp = on",
            ],
        );
        c.pgbench(&["-q", "-i", "-s", "1"]);
        c.pgbench(&["-t", "150", "-c", "2"]);
        run_workload(&c);
        for method in ["lz4", "zstd"] {
            c.sql(&format!("ALTER SYSTEM SET wal_compression = {method}"));
            c.sql("SELECT pg_reload_conf()");
            std::thread::sleep(std::time::Duration::from_millis(300));
            c.pgbench(&["-t", "100", "-c", "2"]);
            run_workload(&c);
        }
        running_xacts_with_subtransactions(&c);
        prepared_transactions(&c);
        c.sql("CREATE DATABASE db2");
        c.sql("DROP DATABASE db2");
        c.sql("SELECT pg_switch_wal()");
        // A 20 MB logical message: one record longer than a 16 MB segment.
        c.sql("SELECT pg_logical_emit_message(true, 'parity', repeat('x', 20 * 1024 * 1024))");
        c.sql("CHECKPOINT");
        c.stop();
        compare_dir(&c.wal_dir(), &mut tally);
    }

    // Cluster 2: no checksums, full_page_writes off with hint logging (44-byte
    // FPI_FOR_HINT records without images), no consistency checking.
    {
        let mut c = PgCluster::start(&[], &["full_page_writes = off", "wal_log_hints = on"]);
        c.pgbench(&["-q", "-i", "-s", "1"]);
        c.pgbench(&["-t", "200", "-c", "2"]);
        run_workload(&c);
        c.sql("SELECT count(*) FROM pgbench_accounts");
        c.sql("CHECKPOINT");
        c.stop();
        compare_dir(&c.wal_dir(), &mut tally);
    }

    eprintln!("parity: {tally:#?}");
    assert!(
        tally.records > 50_000,
        "too few records compared: {}",
        tally.records
    );
    assert!(
        tally.desc_compared > 40_000,
        "too few descriptions compared: {}",
        tally.desc_compared
    );
    for m in ["none", "pglz", "lz4", "zstd"] {
        assert!(
            tally.images.get(m).copied().unwrap_or(0) > 100,
            "too few {m} images: {:?}",
            tally.images
        );
    }
    assert!(
        tally.spanning_segments >= 1,
        "no record spans a segment boundary"
    );
    assert!(tally.switch_records >= 1, "no XLOG_SWITCH record");
    assert!(
        tally.running_xacts_subxacts >= 1 && tally.running_xacts_overflowed >= 1,
        "no RUNNING_XACTS with subtransactions listed and overflowed: {tally:?}"
    );
    assert!(
        tally.prepares >= 3 && tally.prepares_with_origin >= 1 && tally.commit_ts_zeropages >= 1,
        "no PREPARE or commit-timestamp ZEROPAGE records: {tally:?}"
    );
}

/// `redo-helper waldump --stats` prints the same table as `pg_waldump --stats`.
#[test]
fn waldump_cli_stats_match_pg_waldump() {
    let mut c = PgCluster::start(&[], &["wal_compression = lz4"]);
    c.pgbench(&["-q", "-i", "-s", "1"]);
    c.pgbench(&["-t", "100"]);
    c.stop();
    let dir = c.wal_dir();
    let bin = env!("CARGO_BIN_EXE_redo-helper");
    for stats in ["--stats", "--stats=record"] {
        let (theirs, _) = pg_waldump(&dir, &["-s", "0/1000000", stats]);
        let out = std::process::Command::new(bin)
            .args(["waldump", "--path"])
            .arg(&dir)
            .args(["--start", "0/1000000", stats])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(ours, theirs, "{stats} output differs");
        assert!(String::from_utf8_lossy(&out.stderr).contains("end of WAL"));
    }
    // Plain output for a whole segment: identical lines (timestamps printed in UTC).
    let (theirs, _) = pg_waldump(&dir, &["000000010000000000000001"]);
    let out = std::process::Command::new(bin)
        .args(["waldump", "--path"])
        .arg(&dir)
        .arg("000000010000000000000001")
        .output()
        .unwrap();
    assert!(out.status.success());
    let ours: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!(o, t);
    }
    // Errors are typed: a missing start segment is reported, not a panic.
    let out = std::process::Command::new(bin)
        .args(["waldump", "--path"])
        .arg(&dir)
        .args(["--start", "FF/0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not find file"));
    let _ = WalError::is_end_of_wal;
}

/// `--stats` over many segments is counted on several threads, part by part
/// (`cmd::waldump`'s `parallel`): with 1 MB segments a small load spans a few dozen, with
/// records crossing segment boundaries and WAL switches, and the table must still be
/// pg_waldump's: for the whole WAL (to its end), for a range of segment files, and after
/// corruption in a middle segment, where both tools stop at the same record (and so does
/// our single pass).
#[test]
fn waldump_stats_over_many_segments_match_pg_waldump() {
    let mut c = PgCluster::start(&["--wal-segsize=1"], &[]);
    c.pgbench(&["-q", "-i", "-s", "1"]);
    // WAL switches between the runs: parts whose boundary record is a switch, whose
    // successor begins after the next segment's long page header.
    for _ in 0..3 {
        c.pgbench(&["-t", "100"]);
        c.sql("SELECT pg_switch_wal()");
    }
    c.pgbench(&["-t", "100"]);
    c.stop();
    let bin = env!("CARGO_BIN_EXE_redo-helper");
    let ours = |dir: &Path, args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(["waldump", "--path"])
            .arg(dir)
            .args(args)
            .output()
            .unwrap();
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        (lines, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let mut segments: Vec<String> = std::fs::read_dir(c.wal_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24)
        .collect();
    segments.sort();
    assert!(segments.len() >= 12, "only {} segments", segments.len());
    // 1 MB segments: 4096 per "xlogid".
    let segno = |name: &str| {
        u64::from_str_radix(&name[8..16], 16).unwrap() * 4096
            + u64::from_str_radix(&name[16..24], 16).unwrap()
    };
    let start = Lsn(segno(&segments[0]) << 20).to_string();
    let (first, last) = (&segments[1], &segments[segments.len() - 2]);
    let check = |dir: &Path, args: &[&str]| {
        let (theirs, _) = pg_waldump(dir, args);
        let (mine, err) = ours(dir, args);
        assert_eq!(mine, theirs, "{args:?}: {err}");
        // The single pass (`--no-map` reads the files with read(2), on one thread) agrees.
        let (single, _) = ours(dir, &[args, &["--no-map"]].concat());
        assert_eq!(mine, single, "{args:?}");
        err
    };
    let err = check(&c.wal_dir(), &["-s", &start, "--stats"]);
    assert!(err.contains("end of WAL"), "{err}");
    check(&c.wal_dir(), &["--stats=record", first, last]);

    // Corruption in the middle: 64 bytes inside a page of the middle segment.
    let copy = TempDir::new("waldump-corrupt");
    for s in &segments {
        std::fs::copy(c.wal_dir().join(s), copy.path().join(s)).unwrap();
    }
    let middle = copy.path().join(&segments[segments.len() / 2]);
    let mut bytes = std::fs::read(&middle).unwrap();
    for b in &mut bytes[40 * 8192 + 3000..40 * 8192 + 3064] {
        *b ^= 0x5A;
    }
    std::fs::write(&middle, &bytes).unwrap();
    let err = check(copy.path(), &["-s", &start, "--stats=record"]);
    assert!(err.contains("error in WAL record"), "{err}");
}
