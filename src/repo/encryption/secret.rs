//! Where the secret that opens an encrypted repository comes from: the config's
//! `passphrase`, `passphrase_file` or `key_command`, else `PGKEEP_PASSPHRASE`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::config::RepositoryConfig;

/// Where a secret is to be found.
#[derive(Clone, Debug)]
pub enum SecretSource {
    Passphrase(String),
    File(std::path::PathBuf),
    Command(String),
    Environment,
}

/// The name of the variable a passphrase may come from.
pub const ENV: &str = "PGKEEP_PASSPHRASE";

impl SecretSource {
    /// The source the config names; `None` if it names none and the variable is unset.
    pub fn of(config: &RepositoryConfig) -> Option<SecretSource> {
        if let Some(p) = &config.passphrase {
            return Some(SecretSource::Passphrase(p.clone()));
        }
        if let Some(f) = &config.passphrase_file {
            return Some(SecretSource::File(f.clone()));
        }
        if let Some(c) = &config.key_command {
            return Some(SecretSource::Command(c.clone()));
        }
        std::env::var_os(ENV).map(|_| SecretSource::Environment)
    }

    /// How a slot made from this source is described: "passphrase" or "key command".
    pub fn kind(&self) -> &'static str {
        match self {
            SecretSource::Command(_) => "key command",
            _ => "passphrase",
        }
    }

    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Passphrase(_) => "repository.passphrase".into(),
            SecretSource::File(f) => format!("the passphrase in {}", f.display()),
            SecretSource::Command(c) => format!("the key printed by `{c}`"),
            SecretSource::Environment => format!("the passphrase in {ENV}"),
        }
    }

    /// The secret itself.
    pub fn read(&self) -> Result<Vec<u8>> {
        let secret = match self {
            SecretSource::Passphrase(p) => p.clone().into_bytes(),
            SecretSource::File(f) => read_file(f)?,
            SecretSource::Command(c) => run(c)?,
            SecretSource::Environment => std::env::var(ENV)
                .with_context(|| format!("{ENV} does not hold text"))?
                .into_bytes(),
        };
        let secret = trim_newline(secret);
        if secret.is_empty() {
            bail!(
                "{} is empty; an encrypted repository needs a secret",
                self.describe()
            );
        }
        Ok(secret)
    }
}

fn trim_newline(mut secret: Vec<u8>) -> Vec<u8> {
    while secret.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        secret.pop();
    }
    secret
}

/// The passphrase in `path`, which only its owner may read or write (as libpq wants of
/// `.pgpass`).
fn read_file(path: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let cannot = || {
        format!(
            "cannot read the passphrase file {}; it must be readable by the user pgkeep runs as",
            path.display()
        )
    };
    let mode = std::fs::metadata(path)
        .with_context(cannot)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "the passphrase file {} is open to other users (mode {:04o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    std::fs::read(path).with_context(cannot)
}

/// The standard output of `command` run by `sh -c`, which must succeed.
fn run(command: &str) -> Result<Vec<u8>> {
    let out = Command::new("sh")
        .args(["-c", command])
        .output()
        .with_context(|| format!("cannot run the key command `{command}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        bail!(
            "the key command `{command}` failed ({}: {why}); fix it or the service it asks",
            out.status
        );
    }
    Ok(out.stdout)
}
