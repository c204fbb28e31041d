//! The WAL record reader against pg_waldump: every record, at the same LSN.

mod common;

use common::{Env, Pg, as_postgres};
use pgkeep::format::lsn::Lsn;
use pgkeep::format::wal::{SegmentSize, WalFile};
use pgkeep::format::walrecord::{self, RecordReader};

fn wal_reader(pg: Pg) {
    let env = Env::new(&format!("walreader{}", pg.major), pg);
    let main = env.primary();
    main.sql("CREATE TABLE big (id int, t text)");
    main.sql("ALTER TABLE big ALTER t SET STORAGE EXTERNAL"); // wide rows: records span pages
    main.sql("INSERT INTO big SELECT g, repeat(md5(g::text), 400) FROM generate_series(1, 3000) g");
    main.sql("SELECT pg_create_restore_point('first')");
    main.sql("CHECKPOINT"); // full-page images follow
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

    let mut ours: Vec<(Lsn, u8, u32)> = Vec::new();
    let mut restore_points = Vec::new();
    let mut reader = RecordReader::default();
    for name in &names {
        let Some(WalFile::Segment { log, seg: s, .. }) = WalFile::parse(name) else {
            unreachable!()
        };
        let bytes = std::fs::read(wal.join(name)).unwrap();
        reader.feed(seg.segno_of(log, s), &bytes, |rec| {
            if let Some((rp, _)) = walrecord::restore_point(&rec) {
                restore_points.push(rp);
            }
            ours.push((rec.lsn, rec.rmid, rec.xid));
        });
    }

    let out = as_postgres(main.pg.tool("pg_waldump"))
        .arg("--path")
        .arg(&wal)
        .arg(names.first().unwrap())
        .arg(&end_segment)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let theirs: Vec<(Lsn, u8, u32)> = text
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
            Some((lsn, rmid, xid))
        })
        .collect();
    assert!(
        theirs.len() > 1000,
        "pg_waldump read too little: {}",
        &text[..text.len().min(500)]
    );
    let ours_cmp: Vec<(Lsn, u8, u32)> = ours
        .iter()
        .map(|&(l, r, x)| (l, if r <= 1 { r } else { 99 }, x))
        .collect();
    assert_eq!(
        ours_cmp.len(),
        theirs.len(),
        "record count differs from pg_waldump"
    );
    assert_eq!(ours_cmp, theirs);
    assert_eq!(restore_points, vec!["first", "second"]);
}

on_each_version!(wal_reader);
