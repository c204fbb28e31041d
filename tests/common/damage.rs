//! Damage done to a repository on purpose, for tests that check it is caught.

use std::os::unix::fs::FileExt;
use std::path::Path;

use pgkeep::repo::index::{ChunkIndex, IndexReads};
use pgkeep::repo::pack::{ChunkHasher, ChunkId, MAX_DELTA_DEPTH};
use pgkeep::repo::storage::LocalStorage;

use super::{Env, Server};

/// Flips one bit of the byte at `offset`.
pub fn flip(path: &Path, offset: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], offset).unwrap();
}

/// The manifest of backup `label`.
pub fn manifest(env: &Env, label: &str) -> pgkeep::repo::manifest::Manifest {
    let bytes = std::fs::read(env.repo.join(format!("main/backups/{label}.manifest"))).unwrap();
    serde_json::from_slice(&pgkeep::repo::object::decode(&bytes).unwrap()).unwrap()
}

/// Flips a byte in the middle of the stored copy of the middle chunk of `table`'s file
/// in backup `label`; returns the chunk.
pub fn damage_table(env: &Env, main: &Server, label: &str, table: &str) -> ChunkId {
    damage_table_undoably(env, main, label, table).0
}

/// As [`damage_table`], also returning the pack and offset that were flipped
/// (flipping them again undoes the damage).
pub fn damage_table_undoably(
    env: &Env,
    main: &Server,
    label: &str,
    table: &str,
) -> (ChunkId, std::path::PathBuf, u64) {
    let file = main.sql(&format!("SELECT pg_relation_filepath('{table}')"));
    let m = manifest(env, label);
    let entry = m.files.iter().find(|f| f.path == file).unwrap();
    let id = entry.chunks[entry.chunks.len() / 2];
    let index = ChunkIndex::load(
        &LocalStorage::new(&env.repo),
        "main/packs",
        ChunkHasher::default(),
        IndexReads::Fresh,
    )
    .unwrap();
    let loc = index.chunks[&id];
    let pack = env.repo.join(index.pack_key("main/packs", loc.pack));
    let storage = LocalStorage::new(&env.repo);
    let still_decodes = || {
        index
            .read_copy(&storage, "main/packs", &id, &loc, None, MAX_DELTA_DEPTH + 1)
            .is_ok()
    };
    // A flip can leave the copy decoding to the same bytes (a match offset changed to
    // another place holding the same bytes, say): such a flip is undone and the next
    // byte tried, so the damage is always there to find.
    for offset in loc.offset + loc.stored_len as u64 / 2..loc.offset + loc.stored_len as u64 {
        flip(&pack, offset);
        if !still_decodes() {
            return (id, pack, offset);
        }
        flip(&pack, offset);
    }
    panic!("no flipped byte in the second half of chunk {id} damages it");
}
