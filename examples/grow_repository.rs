//! Grows a repository to the size `bench/status` measures reports at: BACKUPS backups
//! and SEGMENTS archived WAL segments, made from the one real backup in it.
//!
//!     grow_repository CONFIG CLUSTER BACKUPS SEGMENTS
//!
//! The backups are copies of the newest real manifest (so their chunks exist), each
//! published under an older label and placed in the synthetic WAL before the real WAL,
//! which must start at least SEGMENTS segments in (`pg_resetwal -l`). The synthetic
//! segments are small objects under segment names: reports list WAL, they do not read
//! old segments. Everything is written through pgkeep's own repository layer, so it is
//! laid out, encrypted and published as pgkeep would.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use chrono::TimeDelta;

use pgkeep::config::{Config, ConfigSource};
use pgkeep::engine::Context;
use pgkeep::engine::wal::scan::archived_segments;
use pgkeep::format::lsn::Lsn;
use pgkeep::format::wal::SegmentSize;
use pgkeep::repo::OpenMode;
use pgkeep::repo::object;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, cluster, backups, segments] = &args[..] else {
        bail!("usage: grow_repository CONFIG CLUSTER BACKUPS SEGMENTS");
    };
    let (backups, segments): (u64, u64) = (backups.parse()?, segments.parse()?);
    let config = Config::load(Path::new(config), ConfigSource::Given)?;
    let ctx = Context::new(&config, Some(cluster), OpenMode::Existing)?;
    let real = ctx.repo.readable_manifests(None)?;
    let newest = real
        .last()
        .context("the repository needs one real backup")?;
    let seg = SegmentSize(newest.wal_segment_size);
    let archive = archived_segments(&ctx, seg)?;
    let first_real = *archive
        .get(&newest.timeline)
        .and_then(|s| s.keys().next())
        .context("the real backup's WAL is not archived")?;
    let Some(first) = first_real.checked_sub(segments) else {
        bail!("the real WAL starts at segment {first_real}: start it later with pg_resetwal -l");
    };

    let timeline = newest.timeline;
    let stub = object::encode(b"synthetic segment", 0)?;
    let threads = 8;
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                let (ctx, stub) = (&ctx, &stub);
                scope.spawn(move || -> Result<()> {
                    for segno in (first + worker..first_real).step_by(threads as usize) {
                        ctx.repo.put_wal_new(&seg.name(timeline, segno), stub)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().expect("writer panicked")?;
        }
        Ok(())
    })?;

    // Evenly spread over the synthetic WAL, an hour apart, the last an hour before the
    // real backup.
    let spacing = segments / backups.max(1);
    for i in 0..backups {
        let mut m = newest.clone();
        let start = seg.start_lsn(first + i * spacing);
        m.start_lsn = Lsn(start.0 + 0x28);
        m.checkpoint_lsn = Lsn(start.0 + 0x60);
        m.stop_lsn = Lsn(start.0 + 0x100);
        let before = TimeDelta::hours((backups - i) as i64);
        m.start_time = newest.start_time - before;
        m.stop_time = newest.stop_time - before;
        m.label = m.start_time.format("%Y%m%dT%H%M%SZ").to_string();
        m.parent = None;
        ctx.repo.publish_manifest(&m)?;
    }
    println!("{cluster}: {backups} backups and {segments} segments added before the real ones");
    Ok(())
}
