//! The WAL record reader against pg_waldump: every record, at the same LSN, with the
//! same block references.

mod common;

use std::collections::BTreeMap;

use common::{Env, Pg, Server, as_postgres};
use pgkeep::format::lsn::Lsn;
use pgkeep::format::wal::{SegmentSize, WalFile};
use pgkeep::format::walrecord::{self, RecordReader, StorageChange};

/// LSN, resource manager (XLOG, Transaction or other), xid and block references.
type Record = (Lsn, u8, u32, Vec<String>);

/// The block references of a pg_waldump line, as "SPC/DB/REL FORK BLOCK".
fn block_refs(line: &str) -> Vec<String> {
    line.split("blkref #")
        .skip(1)
        .map(|part| {
            let words: Vec<&str> = part
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|w| !w.is_empty())
                .collect();
            let after = |key: &str| words.iter().position(|w| *w == key).map(|i| words[i + 1]);
            format!(
                "{} {} {}",
                after("rel").unwrap(),
                after("fork").unwrap_or("main"),
                after("blk").unwrap()
            )
        })
        .collect()
}

fn wal_reader(pg: Pg) {
    let env = Env::new(&format!("walreader{}", pg.major), pg);
    let main = env.primary();
    main.sql("CREATE TABLE big (id int, t text)");
    main.sql("ALTER TABLE big ALTER t SET STORAGE EXTERNAL"); // wide rows: records span pages
    main.sql("INSERT INTO big SELECT g, repeat(md5(g::text), 400) FROM generate_series(1, 3000) g");
    main.sql("SELECT pg_create_restore_point('first')");
    // Full-page images follow, compressed (their headers then carry the hole length).
    main.sql("ALTER SYSTEM SET wal_compression = 'pglz'");
    main.sql("SELECT pg_reload_conf()");
    main.sql("CHECKPOINT");
    main.sql("UPDATE big SET id = id + 1 WHERE id % 7 = 0");
    main.sql("SELECT pg_switch_wal()");
    main.sql("INSERT INTO big SELECT g, 'x' FROM generate_series(1, 20000) g");
    main.sql("SELECT pg_create_restore_point('second')");
    let end_segment = main.sql("SELECT pg_walfile_name(pg_switch_wal())");

    let wal = main.pgdata.join("pg_wal");
    let mut names: Vec<String> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| {
            matches!(WalFile::parse(n), Some(WalFile::Segment { .. }))
                && n.as_str() <= end_segment.as_str()
        })
        .collect();
    names.sort();
    let seg = SegmentSize(16 << 20);

    let mut ours: Vec<Record> = Vec::new();
    let mut restore_points = Vec::new();
    let mut reader = RecordReader::default();
    for name in &names {
        let Some(WalFile::Segment { log, seg: s, .. }) = WalFile::parse(name) else {
            unreachable!()
        };
        let bytes = std::fs::read(wal.join(name)).unwrap();
        let mut switched = false;
        let whole = reader.feed(seg.segno_of(log, s), &bytes, |rec| {
            switched = rec.rmid == 0 && rec.info & 0xF0 == 0x40; // XLOG_SWITCH
            if let Some((rp, _)) = walrecord::restore_point(&rec) {
                restore_points.push(rp);
            }
            let blocks = walrecord::parse(&rec.bytes)
                .expect("every record parses")
                .blocks
                .iter()
                .map(|b| {
                    let fork = ["main", "fsm", "vm", "init"][b.fork as usize];
                    let r = b.rel;
                    format!(
                        "{}/{}/{} {fork} {}",
                        r.tablespace, r.database, r.relfilenode, b.block
                    )
                })
                .collect();
            ours.push((rec.lsn, rec.rmid, rec.xid, blocks));
        });
        // Valid WAL ends early only after a switch, or in the current segment.
        assert!(
            whole || switched || name == &end_segment,
            "{name} ends early"
        );
    }

    let out = as_postgres(main.pg.tool("pg_waldump"))
        .arg("--path")
        .arg(&wal)
        .arg(names.first().unwrap())
        .arg(&end_segment)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let theirs: Vec<Record> = text
        .lines()
        .filter_map(|l| {
            let lsn = l.split("lsn: ").nth(1)?.split(',').next()?.parse().ok()?;
            let xid = l
                .split("tx:")
                .nth(1)?
                .split(',')
                .next()?
                .trim()
                .parse()
                .ok()?;
            let rmgr = l.strip_prefix("rmgr: ")?.split_whitespace().next()?;
            let rmid = match rmgr {
                "XLOG" => 0,
                "Transaction" => 1,
                _ => 99,
            };
            Some((lsn, rmid, xid, block_refs(l)))
        })
        .collect();
    assert!(
        theirs.len() > 1000,
        "pg_waldump read too little: {}",
        &text[..text.len().min(500)]
    );
    let ours_cmp: Vec<Record> = ours
        .into_iter()
        .map(|(l, r, x, b)| (l, if r <= 1 { r } else { 99 }, x, b))
        .collect();
    assert_eq!(
        ours_cmp.len(),
        theirs.len(),
        "record count differs from pg_waldump"
    );
    assert_eq!(ours_cmp, theirs);
    assert_eq!(restore_points, vec!["first", "second"]);
    let details = as_postgres(main.pg.tool("pg_waldump"))
        .args(["--bkp-details", "--path"])
        .arg(&wal)
        .arg(names.first().unwrap())
        .arg(&end_segment)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&details.stdout).contains("pglz"),
        "no compressed full-page image was read"
    );
}

on_each_version!(wal_reader);

/// Segment names in `pg_wal` up to `last`, in order.
fn segments_up_to(main: &Server, last: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(main.pgdata.join("pg_wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| {
            matches!(WalFile::parse(n), Some(WalFile::Segment { .. })) && n.as_str() <= last
        })
        .collect();
    names.sort();
    names
}

/// The storage changes read from the WAL (creations, truncations, dropped relations and
/// databases) give the same main-fork limit blocks as PostgreSQL's own WAL summarizer.
#[test]
fn storage_changes_match_wal_summaries() {
    let env = Env::new("limits", Pg::new(18));
    let main = env.primary();
    main.sql("ALTER SYSTEM SET summarize_wal = on");
    main.sql("ALTER SYSTEM SET max_prepared_transactions = 4");
    main.stop();
    main.start();
    let location = env.path("ts");
    std::fs::create_dir(&location).unwrap();
    common::chown_postgres(&location);
    main.sql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        location.display()
    ));
    main.sql("CREATE TABLE shrink AS SELECT g AS id, repeat('x', 200) AS t FROM generate_series(1, 20000) g");
    main.sql("CREATE TABLE dropped AS SELECT g FROM generate_series(1, 1000) g");
    main.sql("CREATE TABLE emptied AS SELECT g FROM generate_series(1, 1000) g");
    main.sql("CREATE TABLE prepared_drop AS SELECT g FROM generate_series(1, 1000) g");
    main.sql("CREATE TABLE in_ts TABLESPACE ts AS SELECT g FROM generate_series(1, 1000) g");
    main.sql("CREATE DATABASE moved");
    // Summaries end at checkpoints: compare from this one on.
    main.sql("CHECKPOINT");
    let redo = main.sql("SELECT redo_lsn FROM pg_control_checkpoint()");
    main.sql("DELETE FROM shrink WHERE id > 5000");
    main.sql("VACUUM shrink");
    main.sql("DROP TABLE dropped");
    main.sql("TRUNCATE emptied");
    main.sql("BEGIN; CREATE TABLE rolled_back AS SELECT 1 AS x; ROLLBACK");
    main.sql("CREATE DATABASE copied STRATEGY FILE_COPY");
    main.sql("CREATE DATABASE logged STRATEGY WAL_LOG");
    main.sql("DROP DATABASE copied");
    // Two-phase: the dropped relations come with COMMIT PREPARED and ROLLBACK PREPARED.
    let prepared_drop = main
        .sql("SELECT pg_relation_filepath('prepared_drop')")
        .replace("base/", "1663/");
    main.sql("BEGIN; DROP TABLE prepared_drop; PREPARE TRANSACTION 'a'");
    main.sql("COMMIT PREPARED 'a'");
    main.sql("BEGIN; CREATE TABLE prepared_create AS SELECT 1 AS x; PREPARE TRANSACTION 'b'");
    main.sql("ROLLBACK PREPARED 'b'");
    main.sql("DELETE FROM in_ts WHERE g > 10");
    main.sql("VACUUM in_ts");
    main.sql("ALTER DATABASE moved SET TABLESPACE ts");
    let end: Lsn = main.sql("SELECT pg_switch_wal()").parse().unwrap();
    let last = main.sql(&format!("SELECT pg_walfile_name('{end}')"));
    main.sql("CHECKPOINT"); // WAL after the switch, for the summarizer to go past it
    for _ in 0..300 {
        let summarized: Lsn = main
            .sql("SELECT summarized_lsn FROM pg_get_wal_summarizer_state()")
            .parse()
            .unwrap();
        if summarized >= end {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Theirs: the lowest limit block per relation (relfilenode 0: a whole database).
    let mut theirs: BTreeMap<String, u32> = BTreeMap::new();
    let rows = main.sql(&format!(
        "SELECT string_agg(c.reltablespace || '/' || c.reldatabase || '/' || c.relfilenode || ' ' || c.relblocknumber, E'\\n') \
         FROM pg_available_wal_summaries() w, pg_wal_summary_contents(w.tli, w.start_lsn, w.end_lsn) c \
         WHERE w.start_lsn >= '{redo}' AND c.is_limit_block AND c.relforknumber = 0",
    ));
    for row in rows.lines() {
        let (rel, block) = row.split_once(' ').unwrap();
        let block: u32 = block.parse().unwrap();
        let e = theirs.entry(rel.to_string()).or_insert(block);
        *e = (*e).min(block);
    }
    let range = main.sql(&format!(
        "SELECT min(start_lsn) || ' ' || max(end_lsn) FROM pg_available_wal_summaries() WHERE start_lsn >= '{redo}'"
    ));
    let (from, to) = range.split_once(' ').unwrap();
    let (from, to): (Lsn, Lsn) = (from.parse().unwrap(), to.parse().unwrap());

    let mut ours: BTreeMap<String, u32> = BTreeMap::new();
    let mut limit = |spc: u32, db: u32, rel: u32, block: u32| {
        let e = ours.entry(format!("{spc}/{db}/{rel}")).or_insert(block);
        *e = (*e).min(block);
    };
    let seg = SegmentSize(16 << 20);
    let mut reader = RecordReader::default();
    for name in segments_up_to(&main, &last) {
        let Some(WalFile::Segment { log, seg: s, .. }) = WalFile::parse(&name) else {
            unreachable!()
        };
        let bytes = std::fs::read(main.pgdata.join("pg_wal").join(&name)).unwrap();
        reader.feed(seg.segno_of(log, s), &bytes, |rec| {
            if rec.lsn < from || rec.lsn >= to {
                return;
            }
            match walrecord::storage_change(&rec).expect("every record reads") {
                Some(StorageChange::ForkCreated { rel, fork: 0 }) => {
                    limit(rel.tablespace, rel.database, rel.relfilenode, 0)
                }
                Some(StorageChange::Truncated { rel, blocks }) => {
                    limit(rel.tablespace, rel.database, rel.relfilenode, blocks)
                }
                Some(StorageChange::RelationsDropped(rels)) => rels
                    .iter()
                    .for_each(|r| limit(r.tablespace, r.database, r.relfilenode, 0)),
                Some(StorageChange::DatabaseCreated {
                    tablespace,
                    database,
                }) => limit(tablespace, database, 0, 0),
                Some(StorageChange::DatabaseDropped {
                    database,
                    tablespaces,
                }) => tablespaces.iter().for_each(|&t| limit(t, database, 0, 0)),
                _ => {}
            }
        });
    }
    assert!(
        theirs.len() >= 8,
        "the workload should leave many limit blocks: {theirs:?}"
    );
    assert!(
        theirs.values().any(|&b| b > 0),
        "a truncation to a non-zero length: {theirs:?}"
    );
    assert!(
        theirs.contains_key(&prepared_drop),
        "a drop by COMMIT PREPARED: {theirs:?}"
    );
    assert!(
        theirs.keys().any(|k| !k.starts_with("1663/")),
        "limits in the tablespace: {theirs:?}"
    );
    let differ = |a: &BTreeMap<String, u32>, b: &BTreeMap<String, u32>| -> Vec<String> {
        a.iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| format!("{k} {v}"))
            .collect()
    };
    assert_eq!(
        (differ(&ours, &theirs), differ(&theirs, &ours)),
        (vec![], vec![]),
        "limit blocks only we see, only the summaries show (from {from} to {to})"
    );
}
