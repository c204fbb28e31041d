//! The AWS shared files (`~/.aws/credentials` and `~/.aws/config`), read as the AWS CLI
//! and SDKs read them, for an S3 repository whose config and environment give no key:
//! profile `AWS_PROFILE` (else `default`), files at `AWS_SHARED_CREDENTIALS_FILE` and
//! `AWS_CONFIG_FILE` (else under `~/.aws`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

/// `builder` with the profile's credentials and region filled in where unset.
pub fn apply(mut builder: AmazonS3Builder) -> Result<AmazonS3Builder> {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let credentials = read("AWS_SHARED_CREDENTIALS_FILE", "credentials")?;
    let config = read("AWS_CONFIG_FILE", "config")?;
    let config_section = match profile.as_str() {
        "default" => "default".to_string(),
        other => format!("profile {other}"),
    };
    let found = [
        (
            credentials.get(&profile),
            "aws_access_key_id",
            AmazonS3ConfigKey::AccessKeyId,
        ),
        (
            credentials.get(&profile),
            "aws_secret_access_key",
            AmazonS3ConfigKey::SecretAccessKey,
        ),
        (
            credentials.get(&profile),
            "aws_session_token",
            AmazonS3ConfigKey::Token,
        ),
        (
            config.get(&config_section),
            "region",
            AmazonS3ConfigKey::Region,
        ),
    ];
    for (section, name, key) in found {
        if let Some(value) = section.and_then(|s| s.get(name))
            && builder.get_config_value(&key).is_none()
        {
            builder = builder.with_config(key, value);
        }
    }
    Ok(builder)
}

/// The sections of the file named by `env`, else `~/.aws/NAME`; none if it is absent.
fn read(env: &str, name: &str) -> Result<Sections> {
    let path = match std::env::var_os(env) {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".aws").join(name),
            None => return Ok(Sections::new()),
        },
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Sections::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read the AWS file {}", path.display())),
    }
}

type Sections = BTreeMap<String, BTreeMap<String, String>>;

/// An INI file: `[section]` lines, `key = value` lines, `#` and `;` comments.
fn parse(text: &str) -> Sections {
    let mut sections = Sections::new();
    let mut current = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_string());
            sections.entry(name.trim().to_string()).or_default();
        } else if let (Some(section), Some((key, value))) = (&current, line.split_once('=')) {
            sections
                .get_mut(section)
                .expect("entered above")
                .insert(key.trim().to_string(), value.trim().to_string());
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_profiles() {
        let s = parse(
            "# comment\n[default]\naws_access_key_id = AK\naws_secret_access_key=SK\n\n[profile x]\nregion = eu-west-1\n",
        );
        assert_eq!(s["default"]["aws_access_key_id"], "AK");
        assert_eq!(s["default"]["aws_secret_access_key"], "SK");
        assert_eq!(s["profile x"]["region"], "eu-west-1");
    }
}
