//! A flipped byte anywhere in the repository is named by verify and stops restore; a
//! lost pack is named by verify and does not spread to the next backup.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{ACCOUNTS_FINGERPRINT, Env, Pg};
use pgkeep::repo::pack::ChunkIndex;
use pgkeep::repo::storage::LocalStorage;

fn flip(path: &Path, offset: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], offset).unwrap();
}

fn corruption(pg: Pg) {
    let env = Env::new(&format!("corruption{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(1);
    let label = env.backup();
    env.pgkeep_ok(&["check"]);
    env.pgkeep_ok(&["verify"]);

    // Chunks spread over the index, each flipped in the middle of its stored bytes.
    let index = ChunkIndex::load(&LocalStorage::new(&env.repo), "main/packs").unwrap();
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

/// A pack file lost from the repository (its index left behind): verify names the
/// backup that needed it, and the next backup, though incremental, reads that data
/// again instead of referring to what is gone; it alone restores.
fn lost_pack(pg: Pg) {
    let env = Env::new(&format!("lostpack{}", pg.major), pg);
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    main.pgbench_init(1);
    let full = env.backup();
    let index = ChunkIndex::load(&LocalStorage::new(&env.repo), "main/packs").unwrap();
    let largest = (0..index.packs.len() as u32)
        .map(|p| env.repo.join(index.pack_key("main/packs", p)))
        .max_by_key(|path| std::fs::metadata(path).unwrap().len())
        .unwrap();
    std::fs::remove_file(&largest).unwrap();
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
    env.pgkeep_ok(&["check"]);
    let server = env.restore_and_start(
        "restored",
        &[
            "--backup",
            &incremental,
            "--target",
            "immediate",
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(server.sql(ACCOUNTS_FINGERPRINT), expected);
}

on_each_version!(lost_pack);
