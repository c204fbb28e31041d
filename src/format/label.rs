//! The `backup_label` file that `pg_backup_stop` returns.

use super::lsn::Lsn;

/// The fields of a backup label that recovery and pgkeep depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupLabel {
    pub start_lsn: Lsn,
    pub checkpoint_lsn: Lsn,
    pub start_timeline: u32,
}

/// The label of an incremental backup (`BASE_BACKUP (INCREMENTAL)`) as the label of the
/// backup reconstructed from it: without the `INCREMENTAL FROM` lines, which make the
/// server refuse to start (as pg_combinebackup writes it).
pub fn reconstructed(text: &str) -> String {
    text.lines()
        .filter(|line| !line.starts_with("INCREMENTAL FROM "))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Parses the label text, e.g.
/// `START WAL LOCATION: 0/2000028 (file 000000010000000000000002)`.
pub fn parse(text: &str) -> Result<BackupLabel, String> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .ok_or_else(|| format!("backup_label has no '{key}' line"))
    };
    let start = field("START WAL LOCATION:")?;
    let start_lsn = start.split_whitespace().next().unwrap_or("").parse()?;
    let checkpoint_lsn = field("CHECKPOINT LOCATION:")?.parse()?;
    let start_timeline = field("START TIMELINE:")?
        .parse()
        .map_err(|_| "backup_label has a malformed START TIMELINE".to_string())?;
    Ok(BackupLabel {
        start_lsn,
        checkpoint_lsn,
        start_timeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconstructed_label_drops_incremental_lines() {
        let text = "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\n\
                    INCREMENTAL FROM LSN: 0/5000028\nINCREMENTAL FROM TLI: 1\n\
                    START TIMELINE: 1\n";
        assert_eq!(
            reconstructed(text),
            "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\nSTART TIMELINE: 1\n"
        );
    }

    #[test]
    fn parses_pg15_label() {
        let text = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                    CHECKPOINT LOCATION: 0/2000060\n\
                    BACKUP METHOD: streamed\nBACKUP FROM: primary\n\
                    START TIME: 2026-11-21 09:00:00 UTC\nLABEL: x\nSTART TIMELINE: 1\n";
        let label = parse(text).unwrap();
        assert_eq!(label.start_lsn, "0/2000028".parse().unwrap());
        assert_eq!(label.checkpoint_lsn, "0/2000060".parse().unwrap());
        assert_eq!(label.start_timeline, 1);
        assert!(parse("LABEL: x").is_err());
    }
}
