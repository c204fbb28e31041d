//! A flipped byte anywhere in the repository is named by verify and stops restore; a
//! lost pack is named by verify and does not spread to the next backup.

mod common;

use common::damage::{damage_table, flip};
use common::{ACCOUNTS_FINGERPRINT, Env, Pg};
use pgkeep::repo::index::{ChunkIndex, IndexReads};
use pgkeep::repo::pack::ChunkHasher;
use pgkeep::repo::storage::LocalStorage;

fn corruption(pg: Pg) {
    let env = Env::new(&format!("corruption{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(1);
    let label = env.backup();
    env.pgkeep_ok(&["check"]);
    env.pgkeep_ok(&["verify"]);

    // Chunks spread over the index, each flipped in the middle of its stored bytes.
    let index = ChunkIndex::load(
        &LocalStorage::new(&env.repo),
        "main/packs",
        ChunkHasher::default(),
        IndexReads::Fresh,
    )
    .unwrap();
    let mut chunks: Vec<_> = index.chunks.iter().collect();
    chunks.sort_by_key(|(id, _)| **id);
    for (id, loc) in chunks.iter().step_by(chunks.len() / 6 + 1) {
        let pack = env.repo.join(index.pack_key("main/packs", loc.pack));
        let offset = loc.offset + loc.stored_len as u64 / 2;
        flip(&pack, offset);
        let err = env.pgkeep_err(&["verify"]);
        assert!(
            err.contains(&format!("chunk {id}")) && err.contains("is corrupt"),
            "{err}"
        );
        assert!(
            err.contains(&label),
            "verify must name the broken backup: {err}"
        );
        flip(&pack, offset);
    }
    // A byte in a pack's own index area is caught too (the pack's name is its hash).
    let (_, loc) = chunks[0];
    let pack = env.repo.join(index.pack_key("main/packs", loc.pack));
    let len = std::fs::metadata(&pack).unwrap().len();
    flip(&pack, len - 12);
    assert!(
        env.pgkeep_err(&["verify"])
            .contains("corrupt outside its chunk data")
    );
    flip(&pack, len - 12);
    env.pgkeep_ok(&["verify"]);

    // Restore stops on the bad chunk and leaves a directory PostgreSQL will not start.
    let (id, loc) = chunks[chunks.len() / 2];
    let pack = env.repo.join(index.pack_key("main/packs", loc.pack));
    flip(&pack, loc.offset + loc.stored_len as u64 / 2);
    let pgdata = env.path("restored");
    let err = env.pgkeep_err(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert!(
        err.contains(&format!("chunk {id}")) && err.contains("is corrupt"),
        "{err}"
    );
    assert!(!pgdata.join("global/pg_control").exists());
    flip(&pack, loc.offset + loc.stored_len as u64 / 2);

    // A WAL segment the backup needs.
    let info: serde_json::Value =
        serde_json::from_str(&env.pgkeep_ok(&["info", "--json"])).unwrap();
    let start: pgkeep::format::lsn::Lsn = info["backups"][0]["start_lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let seg = pgkeep::format::wal::SegmentSize(16 << 20);
    let name = seg.name(1, seg.segno(start));
    let segment = env.repo.join("main/wal/00000001").join(&name);
    let len = std::fs::metadata(&segment).unwrap().len();
    flip(&segment, len / 2);
    let err = env.pgkeep_err(&["verify"]);
    assert!(
        err.contains(&format!("archived WAL file {name}")) && err.contains("corrupt"),
        "{err}"
    );
    assert!(err.contains(&label), "{err}");
    // restore_command must stop recovery (exit > 125), not end it quietly.
    let out = env.pgkeep(&["archive-get", &name, env.path("seg").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt"));
    assert!(!env.path("seg").exists());
}

on_each_version!(corruption);

/// The repository's chunk index and its largest pack.
fn largest_pack(env: &Env) -> (ChunkIndex, u32) {
    let index = ChunkIndex::load(
        &LocalStorage::new(&env.repo),
        "main/packs",
        ChunkHasher::default(),
        IndexReads::Fresh,
    )
    .unwrap();
    let size = |p: u32| {
        std::fs::metadata(env.repo.join(index.pack_key("main/packs", p)))
            .unwrap()
            .len()
    };
    let largest = (0..index.packs.len() as u32)
        .max_by_key(|&p| size(p))
        .unwrap();
    (index, largest)
}

/// A pack file lost from the repository (its index left behind): verify names the
/// backup that needed it, and the next backup, though incremental, reads that data
/// again instead of referring to what is gone; it alone restores.
fn lost_pack(pg: Pg) {
    let env = Env::new(&format!("lostpack{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(1);
    let full = env.backup();
    let (index, largest) = largest_pack(&env);
    std::fs::remove_file(env.repo.join(index.pack_key("main/packs", largest))).unwrap();
    let err = env.pgkeep_err(&["verify"]);
    assert!(
        err.contains("pack itself is missing") && err.contains(&full),
        "{err}"
    );

    let expected = main.sql(ACCOUNTS_FINGERPRINT);
    let incremental = env.backup();
    let err = env.pgkeep_err(&["verify"]);
    assert!(
        !err.contains(&incremental),
        "the new backup refers to lost data: {err}"
    );
    let server = env.restore_immediate(&incremental);
    assert_eq!(server.sql(ACCOUNTS_FINGERPRINT), expected);

    // Once a full backup has stored every chunk again and the old backups are gone, the
    // index file of the lost pack goes too and the repository verifies clean.
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{config}\n[retention]\nkeep_last = 1\n"),
    )
    .unwrap();
    let orphan = env
        .repo
        .join(index.pack_key("main/packs", largest))
        .with_extension("idx");
    assert!(orphan.exists());
    env.pgkeep_ok(&["backup", "--full"]);
    env.pgkeep_ok(&["expire"]);
    env.pgkeep_ok(&["verify"]);
    assert!(
        !orphan.exists(),
        "the index of the lost pack is kept for ever"
    );
}

on_each_version!(lost_pack);

/// Rows in the middle chunk of `table`'s file (the one `damage_table` damages).
fn middle_chunk_rows(main: &common::Server, table: &str) -> String {
    let blocks: u64 = main
        .sql(&format!("SELECT pg_relation_size('{table}') / 8192"))
        .parse()
        .unwrap();
    let per_chunk = pgkeep::engine::physical::backup::CHUNK_SIZE as u64 / 8192;
    let first = blocks.div_ceil(per_chunk) / 2 * per_chunk;
    format!(
        "(ctid::text::point)[0] BETWEEN {first} AND {}",
        first + per_chunk - 1
    )
}

/// A chunk rots (so that it still decodes, to wrong bytes), then its rows change before
/// an incremental: the incremental stores the changed chunk whole rather than as a delta
/// of the rotten copy (which would decode only
/// through that copy, and so break once a good copy or none replaced it). Once verify has
/// recorded the damage and collection has run, the incremental still restores.
fn incremental_after_rot(pg: Pg) {
    let env = Env::new(&format!("rot{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    // Random bytes: stored as zstd's raw literals, where a flipped bit decodes without an
    // error to wrong bytes (only the chunk's hash can tell).
    main.sql(
        "CREATE TABLE t AS SELECT g AS id, decode(md5(random()::text) || md5(random()::text) \
         || md5(random()::text) || md5(random()::text), 'hex') AS pad FROM generate_series(1, 100000) g",
    );
    main.sql("CHECKPOINT");
    let full = env.backup();
    damage_table(&env, &main, &full, "t");
    let rows = middle_chunk_rows(&main, "t");
    main.sql(&format!("UPDATE t SET pad = 'changed'::bytea WHERE {rows}"));
    main.sql("CHECKPOINT");
    let incremental = env.backup();
    let contents = "SELECT md5(string_agg(id || encode(pad, 'hex'), ',' ORDER BY id)) FROM t";
    let expected = main.sql(contents);
    env.pgkeep_ok(&["check"]);
    let err = env.pgkeep_err(&["verify"]);
    assert!(
        err.contains(&full) && !err.contains(&incremental),
        "only the full backup holds the rotten chunk: {err}"
    );
    env.pgkeep_ok(&["backup", "--full"]);
    env.pgkeep_ok(&["expire"]);
    let server = env.restore_immediate(&incremental);
    assert_eq!(server.sql(contents), expected);
}

on_each_version!(incremental_after_rot);

/// Stored chunks rot. `verify` finds them and says a full backup heals; the full backup
/// reuses neither the copy verify recorded nor one that rotted since (it reads back
/// every copy it reuses) but stores that data again, so it restores exactly. The older
/// backup stays damaged where the database no longer holds its data.
fn full_backup_heals(pg: Pg) {
    let env = Env::new(&format!("heal{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.sql("CREATE TABLE kept AS SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, 200000) g");
    main.sql("CREATE TABLE dropped AS SELECT g AS id, md5(g::text) AS pad FROM generate_series(1, 100000) g");
    main.sql("CREATE TABLE later AS SELECT g AS id FROM generate_series(1, 200000) g");
    main.sql("CHECKPOINT");
    let old = env.backup();
    let healable = damage_table(&env, &main, &old, "kept");
    let lost = damage_table(&env, &main, &old, "dropped");
    let err = env.pgkeep_err(&["verify"]);
    assert!(
        err.contains(&format!("chunk {healable} in pack"))
            && err.contains(&format!("chunk {lost} in pack")),
        "{err}"
    );
    assert!(
        err.contains(&old) && err.contains("pgkeep backup --full"),
        "{err}"
    );

    // Damage verify has not seen: an incremental would reuse it, a full backup must not.
    let unseen = damage_table(&env, &main, &old, "later");
    main.sql("DROP TABLE dropped");
    main.sql("CHECKPOINT");
    let out = env.pgkeep_ok(&["backup", "--full"]);
    assert!(out.contains("healed: stored 2 chunks again"), "{out}");
    let healed = common::label_of(&out);
    let server = env.restore_immediate(&healed);
    let contents = "SELECT (SELECT md5(string_agg(id || pad, ',' ORDER BY id)) FROM kept) \
                    || (SELECT sum(id) FROM later)";
    assert_eq!(server.sql(contents), main.sql(contents));
    server.stop();
    let err = env.pgkeep_err(&["verify"]);
    let broken: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("(affects: ") && !l.contains("(affects: no backup)"))
        .collect();
    assert!(
        broken
            .iter()
            .all(|l| l.contains(&old) && !l.contains(&healed))
            && !broken.is_empty(),
        "only the old backup is still damaged: {err}"
    );
    for healed_chunk in [healable, unseen] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("chunk {healed_chunk} in pack"))
                    && l.contains("no backup needs this copy")),
            "{err}"
        );
    }
}

on_each_version!(full_backup_heals);

/// A pack's index file is lost: the pack is read through the index inside it, `verify`
/// names it, `expire` keeps the pack (its chunks are referenced) and writes the file
/// again, and the backup restores.
fn lost_index_file(pg: Pg) {
    let env = Env::new(&format!("lostidx{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(1);
    let label = env.backup();
    let expected = main.sql(ACCOUNTS_FINGERPRINT);
    let (index, largest) = largest_pack(&env);
    let idx = env
        .repo
        .join(index.pack_key("main/packs", largest))
        .with_extension("idx");
    std::fs::remove_file(&idx).unwrap();

    let err = env.pgkeep_err(&["verify"]);
    assert!(
        err.contains(index.pack_name(largest)) && err.contains("its index file is missing"),
        "{err}"
    );
    env.pgkeep_ok(&["expire"]);
    assert!(idx.exists(), "expire writes the index file again");
    assert!(
        env.repo
            .join(index.pack_key("main/packs", largest))
            .exists()
    );
    env.pgkeep_ok(&["verify"]);
    let server = env.restore_immediate(&label);
    assert_eq!(server.sql(ACCOUNTS_FINGERPRINT), expected);
}

on_each_version!(lost_index_file);
