//! File names in PGDATA that are not UTF-8 are backed up and restored byte for byte, by
//! full and incremental backups alike.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use common::{Env, Pg};

#[test]
fn names_that_are_not_utf8_survive_byte_for_byte() {
    let env = Env::new("filenames", Pg::new(15));
    let main = env.primary();
    env.pgkeep_ok(&["init"]);
    let odd_file = OsStr::from_bytes(b"notes-\xff\xfe.txt");
    let odd_dir = OsStr::from_bytes(b"old-\xe9t\xe9");
    let nested = OsStr::from_bytes(b"a\x80b");
    std::fs::write(main.pgdata.join(odd_file), b"kept exactly").unwrap();
    std::fs::create_dir(main.pgdata.join(odd_dir)).unwrap();
    std::fs::write(main.pgdata.join(odd_dir).join(nested), b"nested").unwrap();
    // Two names that show the same once made text.
    std::fs::write(main.pgdata.join(OsStr::from_bytes(b"twin-\xff")), b"one").unwrap();
    std::fs::write(main.pgdata.join(OsStr::from_bytes(b"twin-\xfe")), b"two").unwrap();
    common::chown_postgres(&main.pgdata);
    env.backup();
    let incremental = env.backup(); // takes the unchanged files from the full one
    env.pgkeep_ok(&["check"]);
    env.pgkeep_ok(&["verify"]);

    let restored = env.path("restored");
    env.pgkeep_ok(&[
        "restore",
        "--pgdata",
        restored.to_str().unwrap(),
        "--backup",
        &incremental,
    ]);
    let read = |rel: &[&OsStr]| {
        let path = rel.iter().fold(restored.clone(), |p, part| p.join(part));
        std::fs::read(path).unwrap()
    };
    assert_eq!(read(&[odd_file]), b"kept exactly");
    assert_eq!(read(&[odd_dir, nested]), b"nested");
    assert_eq!(read(&[OsStr::from_bytes(b"twin-\xff")]), b"one");
    assert_eq!(read(&[OsStr::from_bytes(b"twin-\xfe")]), b"two");
    let mut server = env.restored(&restored);
    server.options = "-c archive_mode=off".into();
    server.start();
    server.wait_promoted();
}
