//! Logical backups: pg_dump archives stored through the chunk store (`dump`, `import`),
//! restored through pg_restore or psql (`restore`) and written out for the stock tools
//! (`export`), both fed from the repository (`feed`, `pipes`).

mod child;
pub mod dump;
pub mod export;
mod feed;
pub mod import;
mod pipes;
pub mod restore;
mod store;
mod watch;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// A private directory under the system's temporary directory (`TMPDIR`), removed
/// when dropped. One left by a pgkeep that was killed is removed by the next one.
struct Scratch(PathBuf);

impl Scratch {
    fn new(purpose: &str) -> Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
        remove_abandoned(&std::env::temp_dir());
        let random: [u8; 8] = crate::repo::encryption::random()?;
        let path = std::env::temp_dir().join(format!(
            "pgkeep-{purpose}-{}-{}",
            std::process::id(),
            hex::encode(random)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| {
                format!(
                    "cannot create the scratch directory {}; set TMPDIR to a writable directory",
                    path.display()
                )
            })?;
        Ok(Scratch(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!("cannot remove scratch directory {}: {e}", self.0.display());
        }
    }
}

/// Removes scratch directories (`pgkeep-PURPOSE-PID-RANDOM`) in `dir` whose process is
/// gone: what a pgkeep killed mid-dump or mid-restore left. Only this user's.
fn remove_abandoned(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = scratch_pid(&name) else {
            continue;
        };
        let mine = entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me);
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid as libc::pid_t, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if mine && gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The process id in a scratch directory's name `pgkeep-PURPOSE-PID-RANDOM`.
fn scratch_pid(name: &str) -> Option<u32> {
    let mut parts = name.strip_prefix("pgkeep-")?.split('-');
    let (_purpose, pid, random) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && random.len() == 16).then_some(())?;
    pid.parse().ok()
}

/// What a PostgreSQL program said on stderr, trimmed for an error message.
fn tool_messages(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let shown = &lines[lines.len().saturating_sub(20)..];
    shown.join("\n")
}

/// `server_version_num` to its major version (150004 is 15).
fn major_of(version_num: u32) -> u32 {
    version_num / 10000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_scratch_directories_are_found_by_name() {
        assert_eq!(scratch_pid("pgkeep-dump-4242-0123456789abcdef"), Some(4242));
        assert_eq!(scratch_pid("pgkeep-dump-4242-short"), None);
        assert_eq!(scratch_pid("pgkeep-tests"), None);
        assert_eq!(scratch_pid("other-dump-1-0123456789abcdef"), None);
    }
}
