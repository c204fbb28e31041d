//! Logical backups: pg_dump archives stored through the chunk store (`dump`, `import`),
//! restored through pg_restore or psql (`restore`) and written out for the stock tools
//! (`export`), both fed from the repository (`feed`, `pipes`).

pub mod dump;
pub mod export;
mod feed;
pub mod import;
mod pipes;
pub mod restore;

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context as _, Result};

/// A private directory under the system's temporary directory (`TMPDIR`), removed
/// when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(purpose: &str) -> Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
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

/// What a PostgreSQL program said on stderr, trimmed for an error message.
fn tool_messages(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let shown = &lines[lines.len().saturating_sub(20)..];
    shown.join("\n")
}

/// `server_version_num` to its major version (150004 is 15).
fn major_of(version_num: u32) -> u32 {
    version_num / 10000
}
