//! The common problems that a working WAL switch does not show (the practitioner
//! guide's list): the repository's disk filling up, a repository PostgreSQL's own user
//! cannot write (archive-push runs as that user), a replication slot holding WAL on the
//! server, and an archiver that is failing or behind.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Result;

use super::CheckReport;
use crate::config::Location;
use crate::engine::{Context, human_bytes};
use crate::pg::session::Session;

/// Below this share of its file system free, the repository's disk is near full.
const LOW_SPACE_PERCENT: u64 = 10;
/// Below this many WAL segments free, archiving is about to fail.
const SEGMENTS_LEFT: u64 = 16;

pub fn check(ctx: &Context, session: &mut Session, report: &mut CheckReport) -> Result<()> {
    if let Location::Local(root) = &ctx.repo_config.path {
        let segment = ctx.repo.require_info()?.wal_segment_size;
        let space = crate::os::space(root)?;
        match space_finding(space.free, space.total, segment) {
            Some((true, message)) => report.problems.push(message),
            Some((false, message)) => report.warnings.push(message),
            None => {}
        }
        if let Some(pgdata) = &ctx.cluster.pgdata {
            report
                .problems
                .extend(unwritable(root, ctx.cluster_name, pgdata)?);
        }
    }
    report.warnings.extend(slots_holding_wal(ctx, session)?);
    Ok(())
}

/// What the free space of the repository's file system means: `(true, _)` a problem,
/// `(false, _)` a warning.
fn space_finding(free: u64, total: u64, segment: u64) -> Option<(bool, String)> {
    let left = format!(
        "the repository's file system has {} free of {}",
        human_bytes(free),
        human_bytes(total)
    );
    if free < SEGMENTS_LEFT * segment {
        Some((
            true,
            format!(
                "{left}, less than {SEGMENTS_LEFT} WAL segments: archiving is about to fail; free space there (`pgkeep expire`) or move the repository"
            ),
        ))
    } else if free.saturating_mul(100) < total.saturating_mul(LOW_SPACE_PERCENT) {
        Some((
            false,
            format!(
                "{left}, less than {LOW_SPACE_PERCENT}%; free space there or set a retention policy before archiving fails"
            ),
        ))
    } else {
        None
    }
}

/// The repository directories PostgreSQL's OS user (the owner of `pgdata`) must write
/// for archive-push (`wal/` and its timelines, and search the ones above), and the
/// marker it must read, where that user cannot.
fn unwritable(root: &Path, cluster: &str, pgdata: &Path) -> Result<Option<String>> {
    let Ok(data) = std::fs::metadata(pgdata) else {
        return Ok(None); // check_data_directory names it
    };
    let uid = data.uid();
    let wal = root.join(cluster).join("wal");
    let mut needs = vec![
        (root.to_path_buf(), 0o1),
        (root.join(cluster), 0o1),
        (wal.clone(), 0o3),
    ];
    if let Ok(entries) = std::fs::read_dir(&wal) {
        needs.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .map(|p| (p, 0o3)),
        );
    }
    needs.push((root.join("pgkeep.repo"), 0o4));
    let user = crate::os::user_name(uid);
    for (path, bits) in needs.iter().filter(|(p, _)| p.exists()) {
        if !permits(path, uid, data.gid(), *bits)? {
            let meta = std::fs::metadata(path)?;
            let want = match bits {
                0o4 => "read it, so archive-push cannot open the repository",
                0o1 => "enter it, so archive-push cannot reach the WAL archive",
                _ => "write there, so archive-push fails",
            };
            return Ok(Some(format!(
                "{} belongs to {} with mode {:o}, so PostgreSQL's user {user} cannot {want}; chown -R {user} {}",
                path.display(),
                crate::os::user_name(meta.uid()),
                meta.mode() & 0o7777,
                root.display()
            )));
        }
    }
    Ok(None)
}

/// Whether the user `uid` (primary group `gid`) has every one of the `rwx` bits in
/// `bits` (4 read, 2 write, 1 search) on `path`. As that user (pgkeep runs as the
/// cluster's user), the kernel answers, with supplementary groups and ACLs; otherwise
/// the mode bits do.
fn permits(path: &Path, uid: u32, gid: u32, bits: u32) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == uid {
        let name = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: a NUL-terminated path; faccessat only reads it.
        let ok = unsafe {
            libc::faccessat(
                libc::AT_FDCWD,
                name.as_ptr(),
                bits as libc::c_int,
                libc::AT_EACCESS,
            )
        };
        return Ok(ok == 0);
    }
    let meta = std::fs::metadata(path)?;
    let mode = meta.mode();
    let granted = if uid == 0 {
        0o7
    } else if meta.uid() == uid {
        mode >> 6
    } else if meta.gid() == gid {
        mode >> 3
    } else {
        mode
    };
    Ok(granted & bits == bits)
}

/// Replication slots holding more WAL on the server than `[receive] warn_slot_wal_mb`,
/// or that lost WAL their consumer needed.
fn slots_holding_wal(ctx: &Context, session: &mut Session) -> Result<Vec<String>> {
    let limit = ctx.config.receive.warn_slot_wal_mb.saturating_mul(1 << 20);
    let rows = session.rows(
        "SELECT slot_name::text, active::text, coalesce(wal_status, ''), \
                coalesce((CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                               ELSE pg_current_wal_lsn() END - restart_lsn)::bigint::text, '0') \
         FROM pg_replication_slots ORDER BY slot_name",
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (name, active, status) = (&row[0], row[1] == "true", &row[2]);
        let held: u64 = row[3].parse().unwrap_or(0);
        let unused = if active {
            String::new()
        } else {
            format!(
                "; it is not in use: if its consumer is gone, drop it (SELECT pg_drop_replication_slot('{name}'))"
            )
        };
        if status == "lost" {
            out.push(format!(
                "replication slot {name} lost WAL its consumer needed (max_slot_wal_keep_size); that consumer must start again from a new base backup{unused}"
            ));
        } else if held > limit {
            out.push(format!(
                "replication slot {name} holds {} of WAL on the server, more than [receive] warn_slot_wal_mb, and the server's disk fills until its consumer catches up{unused}",
                human_bytes(held)
            ));
        }
    }
    Ok(out)
}

/// Since when and how often the archiver has been failing, if its last attempt failed,
/// and how many files wait to be archived.
pub fn archiver_failing(session: &mut Session) -> Result<Option<String>> {
    let row = &session.rows(
        "SELECT (last_failed_time > coalesce(last_archived_time, '-infinity'))::text, \
                coalesce(last_failed_wal, ''), failed_count::text, \
                coalesce(to_char(last_archived_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), 'never'), \
                CASE WHEN pg_has_role('pg_monitor', 'MEMBER') \
                     THEN (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready')::text \
                     ELSE 'some' END \
         FROM pg_stat_archiver",
    )?[0];
    if row[0] != "true" {
        return Ok(None);
    }
    Ok(Some(format!(
        "archive_command is failing: its last attempt, for {}, failed ({} failures since the statistics were reset, last success {} UTC), and {} WAL files wait in pg_wal to be archived",
        row[1], row[2], row[3], row[4]
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_is_judged_by_segments_left_and_share_free() {
        const SEG: u64 = 16 << 20;
        assert!(space_finding(100 * SEG, 200 * SEG, SEG).is_none());
        let (problem, message) = space_finding(20 * SEG, 1000 * SEG, SEG).unwrap();
        assert!(!problem && message.contains("less than 10%"), "{message}");
        let (problem, message) = space_finding(3 * SEG, 10 * SEG, SEG).unwrap();
        assert!(problem && message.contains("about to fail"), "{message}");
    }
}
