//! The `tablespace_map` file: `OID PATH` per line, as `pg_backup_stop` writes it and
//! recovery reads it (`read_tablespace_map`). A backslash escapes the next byte; the
//! writer escapes `\`, newline and carriage return, so a path may hold any of them. The
//! path follows the first space and may itself begin with spaces.

/// One line: a tablespace OID and the directory its link points to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub oid: u32,
    pub path: String,
}

/// Parses a map the way recovery does; an error names what is malformed.
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut line = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => line.push(escaped),
                None => return Err("tablespace_map ends inside an escape".into()),
            },
            '\n' | '\r' => {
                if !line.is_empty() {
                    out.push(entry(&line)?);
                    line.clear();
                }
            }
            c => line.push(c),
        }
    }
    if !line.is_empty() {
        return Err("tablespace_map's last line is not terminated".into());
    }
    Ok(out)
}

fn entry(line: &str) -> Result<Entry, String> {
    let bad = || format!("malformed tablespace_map line '{line}'");
    let (oid, path) = line.split_once(' ').ok_or_else(bad)?;
    if path.is_empty() {
        return Err(bad());
    }
    Ok(Entry {
        oid: oid.parse().map_err(|_| bad())?,
        path: path.to_string(),
    })
}

/// Writes a map that recovery reads back as `entries`.
pub fn render(entries: &[Entry]) -> String {
    let mut out = String::new();
    for e in entries {
        out.push_str(&e.oid.to_string());
        out.push(' ');
        for c in e.path.chars() {
            if matches!(c, '\\' | '\n' | '\r') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        let entries = vec![
            Entry {
                oid: 16400,
                path: "/srv/with space".into(),
            },
            Entry {
                oid: 16401,
                path: "/srv/back\\slash\nand newline".into(),
            },
            Entry {
                oid: 16402,
                path: "  leading".into(),
            },
        ];
        let text = render(&entries);
        assert_eq!(
            text,
            "16400 /srv/with space\n16401 /srv/back\\\\slash\\\nand newline\n16402   leading\n"
        );
        assert_eq!(parse(&text).unwrap(), entries);
        // As PostgreSQL 15 writes a path with a backslash.
        assert_eq!(parse("1 /a\\\\b\n").unwrap()[0].path, "/a\\b");
        assert!(parse("1 /a").is_err());
        assert!(parse("x /a\n").is_err());
        assert!(parse("1\n").is_err());
    }
}
