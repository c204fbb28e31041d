//! Values in `postgresql.conf` and `postgresql.auto.conf`.
//!
//! PostgreSQL's config lexer (`guc-file.l`) reads a quoted value with backslash escapes
//! (`\f`, `\n`, `\\`, ...) and `''` for a quote, and its own writer (`ALTER SYSTEM`,
//! `escape_single_quotes_ascii`) doubles both quotes and backslashes. A value written
//! any other way can change meaning (`pre\fix` would be read with a form feed) or make
//! the file unparseable (a value ending in `\`).

/// `value` quoted so that PostgreSQL reads back exactly `value`.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            // A raw line break ends the line in the lexer; the escapes mean the same.
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// `text` with `%` doubled, for a literal part of `archive_command` or
/// `restore_command`, where PostgreSQL replaces `%f`, `%p`, `%r` and `%%`.
pub fn escape_percent(text: &str) -> String {
    text.replace('%', "%%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_as_postgres_writes_them() {
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(quote("pre\\fix"), "'pre\\\\fix'");
        assert_eq!(quote("ends in \\"), "'ends in \\\\'");
        assert_eq!(quote("two\nlines"), "'two\\nlines'");
        assert_eq!(escape_percent("/a%b/pgkeep"), "/a%%b/pgkeep");
    }
}
