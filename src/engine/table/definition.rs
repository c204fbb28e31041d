//! A table's definition read from the scratch server's catalog, and the statements
//! that build a copy of it under another name in the live database.
//!
//! Why not pg_dump: its script names the table, its indexes and its sequences as they
//! were, and the live database may still hold them; renaming inside a script means
//! parsing SQL. The catalog's own deparsers (`format_type`, `pg_get_expr`,
//! `pg_get_constraintdef`, `pg_get_indexdef`) give each part on its own, so only names
//! pgkeep chooses go into the statements.
//!
//! What the copy has: the columns (types, collations, defaults, identity, generated
//! expressions, NOT NULL), the rows, primary key, unique, check and exclusion
//! constraints, the other indexes, and sequences of its own at the values they had.
//! What it leaves out, and says so: foreign keys (a copy must not tie itself to live
//! tables, nor cascade from them) and triggers (they would act on the live database).

use anyhow::{Result, bail};

use crate::pg::session::{Session, quote_ident};

/// A table by schema and name (unquoted, as in the catalog).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// Another object in the same schema.
    fn sibling(&self, name: String) -> TableName {
        TableName {
            schema: self.schema.clone(),
            name,
        }
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

struct Column {
    name: String,
    /// Type, collation, default or generation, NOT NULL: the column's definition after
    /// its name, except a default taken from a sequence the column owns.
    definition: String,
    generated: bool,
    /// The sequence the column owns: behind its `serial` default, or its identity.
    sequence: Option<Sequence>,
    identity: bool,
}

struct Sequence {
    /// Its qualified, quoted name on the scratch server.
    name: String,
    /// `AS TYPE`.
    data_type: String,
    /// `INCREMENT BY ... [NO] CYCLE`, as it was.
    options: String,
}

pub struct Definition {
    /// `ONLY` for a table with inheritance children, nothing for a partitioned table
    /// (whose rows are in its partitions).
    only: &'static str,
    columns: Vec<Column>,
    /// (name, definition) of primary key, unique, check and exclusion constraints.
    constraints: Vec<(String, String)>,
    /// (name, what follows `ON table` in `pg_get_indexdef`).
    indexes: Vec<(String, bool, String)>,
    /// Foreign keys and triggers the copy leaves out.
    pub left_out: Vec<String>,
}

/// Reads `table`'s definition; the session must be at the point in time wanted.
pub fn read(session: &mut Session, table: &TableName) -> Result<Definition> {
    // Every name the deparsers print comes out schema-qualified.
    session.execute("SET search_path = pg_catalog")?;
    let found = session.rows_with(
        "SELECT c.oid::text, c.relkind::text, c.relpersistence::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
        &[&table.schema, &table.name],
    )?;
    let Some(row) = found.first() else {
        bail!(
            "table {table} did not exist in the database at the target; check the name (schema.table, case-sensitive) and the target"
        );
    };
    let (oid, kind, persistence) = (row[0].as_str(), row[1].as_str(), row[2].as_str());
    if !["r", "p"].contains(&kind) {
        bail!("{table} is not a table (relkind {kind}); restore-table restores tables");
    }
    if persistence == "u" {
        bail!(
            "table {table} is unlogged: its rows are in no WAL and come back empty from every backup, so there is nothing to restore"
        );
    }
    Ok(Definition {
        only: if kind == "r" { "ONLY " } else { "" },
        columns: columns(session, oid)?,
        constraints: session
            .rows_with(
                "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE conrelid = $1::text::oid AND contype IN ('p', 'u', 'c', 'x') ORDER BY contype <> 'p', conname",
                &[oid],
            )?
            .into_iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect(),
        indexes: indexes(session, oid, table)?,
        left_out: session
            .rows_with(
                "SELECT 'foreign key ' || conname FROM pg_constraint WHERE conrelid = $1::text::oid AND contype = 'f' \
                 UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgrelid = $1::text::oid AND NOT tgisinternal \
                 ORDER BY 1",
                &[oid],
            )?
            .into_iter()
            .map(|r| r[0].clone())
            .collect(),
    })
}

fn columns(session: &mut Session, oid: &str) -> Result<Vec<Column>> {
    let rows = session.rows_with(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull::text, \
                a.attidentity::text, a.attgenerated::text, coalesce(pg_get_expr(d.adbin, d.adrelid), ''), \
                coalesce((SELECT format('%I.%I', cn.nspname, co.collname) FROM pg_collation co \
                          JOIN pg_namespace cn ON cn.oid = co.collnamespace \
                          WHERE co.oid = a.attcollation AND a.attcollation <> t.typcollation), ''), \
                coalesce(sq.name, ''), coalesce(sq.data_type, ''), coalesce(sq.options, '') \
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         LEFT JOIN LATERAL (SELECT format('%I.%I', sn.nspname, s.relname) AS name, \
                format_type(q.seqtypid, NULL) AS data_type, \
                format('INCREMENT BY %s MINVALUE %s MAXVALUE %s START WITH %s CACHE %s %s', q.seqincrement, \
                       q.seqmin, q.seqmax, q.seqstart, q.seqcache, CASE WHEN q.seqcycle THEN 'CYCLE' ELSE 'NO CYCLE' END) AS options \
                FROM pg_depend dp JOIN pg_class s ON s.oid = dp.objid \
                JOIN pg_namespace sn ON sn.oid = s.relnamespace JOIN pg_sequence q ON q.seqrelid = s.oid \
                WHERE dp.classid = 'pg_class'::regclass AND dp.refclassid = 'pg_class'::regclass \
                  AND dp.refobjid = a.attrelid AND dp.refobjsubid = a.attnum \
                  AND dp.deptype = CASE WHEN a.attidentity <> '' THEN 'i' ELSE 'a' END \
                ORDER BY s.oid LIMIT 1) sq ON true \
         WHERE a.attrelid = $1::text::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        &[oid],
    )?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let (name, ty, not_null, identity, generated, default, collation) =
                (&r[0], &r[1], r[2] == "true", &r[3], &r[4], &r[5], &r[6]);
            let sequence = (!r[7].is_empty()).then(|| Sequence {
                name: r[7].clone(),
                data_type: r[8].clone(),
                options: r[9].clone(),
            });
            let options = sequence
                .as_ref()
                .map_or(String::new(), |s| format!(" ({})", s.options));
            let mut definition = ty.clone();
            if !collation.is_empty() {
                definition.push_str(&format!(" COLLATE {collation}"));
            }
            match (generated.as_str(), identity.as_str()) {
                ("s", _) => {
                    definition.push_str(&format!(" GENERATED ALWAYS AS ({default}) STORED"))
                }
                ("v", _) => {
                    definition.push_str(&format!(" GENERATED ALWAYS AS ({default}) VIRTUAL"))
                }
                (_, "a") => definition.push_str(&format!(" GENERATED ALWAYS AS IDENTITY{options}")),
                (_, "d") => {
                    definition.push_str(&format!(" GENERATED BY DEFAULT AS IDENTITY{options}"))
                }
                _ if !default.is_empty() && sequence.is_none() => {
                    definition.push_str(&format!(" DEFAULT {default}"))
                }
                _ => {}
            }
            if not_null {
                definition.push_str(" NOT NULL");
            }
            Column {
                name: name.clone(),
                definition,
                generated: !generated.is_empty(),
                sequence,
                identity: !identity.is_empty(),
            }
        })
        .collect())
}

/// Indexes that no constraint makes, each as (name, unique, the definition after the
/// table's name).
fn indexes(
    session: &mut Session,
    oid: &str,
    table: &TableName,
) -> Result<Vec<(String, bool, String)>> {
    let rows = session.rows_with(
        "SELECT ic.relname::text, i.indisunique::text, pg_get_indexdef(i.indexrelid), quote_ident(ic.relname), \
                format('%I.%I', n.nspname, c.relname) \
         FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class c ON c.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE i.indrelid = $1::text::oid AND i.indisvalid AND NOT EXISTS (SELECT 1 FROM pg_constraint k \
               WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x')) \
         ORDER BY 1",
        &[oid],
    )?;
    rows.into_iter()
        .map(|r| {
            let unique = r[1] == "true";
            let create = if unique { "CREATE UNIQUE INDEX" } else { "CREATE INDEX" };
            let rest = [format!("{create} {} ON ONLY {} ", r[3], r[4]), format!("{create} {} ON {} ", r[3], r[4])]
                .iter()
                .find_map(|prefix| r[2].strip_prefix(prefix.as_str()))
                .map(str::to_string);
            match rest {
                Some(rest) => Ok((r[0].clone(), unique, rest)),
                None => bail!("cannot read the definition of index {} on {table} (`{}`); restore the table with --to-file instead", r[0], r[2]),
            }
        })
        .collect()
}

/// A name for a copy's object: `old` with the table's name at its start replaced by
/// the copy's (`orders_pkey` → `orders_restored_pkey`), else the copy's name and `old`,
/// within PostgreSQL's 63 bytes.
fn renamed(old: &str, from: &str, to: &str) -> String {
    match old.strip_prefix(from) {
        Some(rest) => with_suffix(to, rest),
        None => with_suffix(to, &format!("_{old}")),
    }
}

/// `base` and `suffix` within 63 bytes, `base` shortened first so that names made from
/// one base stay apart.
fn with_suffix(base: &str, suffix: &str) -> String {
    let room = 63usize.saturating_sub(suffix.len()).max(1);
    truncate(format!("{}{suffix}", truncate(base.to_string(), room)), 63)
}

fn truncate(mut name: String, max: usize) -> String {
    while name.len() > max {
        name.pop();
    }
    name
}

/// Builds `copy` in the live database, in one transaction, from the scratch server's
/// `table` (whose definition is `def`); returns the rows copied. Nothing is left of a
/// copy that fails.
pub fn create_copy(
    scratch: &mut Session,
    live: &mut Session,
    table: &TableName,
    def: &Definition,
    copy: &TableName,
) -> Result<u64> {
    live.execute("BEGIN")?;
    let copied = build(scratch, live, table, def, copy);
    match copied {
        Ok(rows) => {
            live.execute("COMMIT")?;
            Ok(rows)
        }
        Err(e) => {
            let _ = live.execute("ROLLBACK");
            Err(e)
        }
    }
}

fn build(
    scratch: &mut Session,
    live: &mut Session,
    table: &TableName,
    def: &Definition,
    copy: &TableName,
) -> Result<u64> {
    for session in [&mut *scratch, &mut *live] {
        // Both ends of the text COPY read and write values alike.
        session.execute(
            "SET DateStyle = ISO, YMD; SET IntervalStyle = postgres; SET TimeZone = 'UTC'; \
             SET bytea_output = hex; SET extra_float_digits = 3",
        )?;
    }
    let sequence_of =
        |c: &Column| copy.sibling(with_suffix(&copy.name, &format!("_{}_seq", c.name)));
    let mut columns = Vec::new();
    for c in &def.columns {
        let mut definition = c.definition.clone();
        if let (Some(sequence), false) = (&c.sequence, c.identity) {
            let seq = sequence_of(c).quoted();
            live.execute(&format!(
                "CREATE SEQUENCE {seq} AS {} {}",
                sequence.data_type, sequence.options
            ))?;
            definition.push_str(&format!(
                " DEFAULT nextval('{}'::regclass)",
                seq.replace('\'', "''")
            ));
        }
        columns.push(format!("{} {definition}", quote_ident(&c.name)));
    }
    live.execute(&format!(
        "CREATE TABLE {} ({})",
        copy.quoted(),
        columns.join(", ")
    ))?;
    let stored: Vec<String> = def
        .columns
        .iter()
        .filter(|c| !c.generated)
        .map(|c| quote_ident(&c.name))
        .collect();
    let stored = stored.join(", ");
    let rows = scratch.copy_into(
        &format!(
            "COPY (SELECT {stored} FROM {}{}) TO STDOUT",
            def.only,
            table.quoted()
        ),
        live,
        &format!("COPY {} ({stored}) FROM STDIN", copy.quoted()),
    )?;
    for c in &def.columns {
        let Some(sequence) = &c.sequence else {
            continue;
        };
        let new = if c.identity {
            live.text_with(
                "SELECT pg_get_serial_sequence($1, $2)",
                &[&copy.quoted(), &c.name],
            )?
        } else {
            let new = sequence_of(c).quoted();
            live.execute(&format!(
                "ALTER SEQUENCE {new} OWNED BY {}.{}",
                copy.quoted(),
                quote_ident(&c.name)
            ))?;
            new
        };
        let old = &sequence.name;
        let at = scratch.rows(&format!(
            "SELECT last_value::text, is_called::text FROM {old}"
        ))?;
        live.text_with(
            "SELECT pg_catalog.setval($1::text::regclass, $2::text::bigint, $3::text::boolean)::text",
            &[&new, &at[0][0], &at[0][1]],
        )?;
    }
    for (name, definition) in &def.constraints {
        let name = quote_ident(&renamed(name, &table.name, &copy.name));
        live.execute(&format!(
            "ALTER TABLE {} ADD CONSTRAINT {name} {definition}",
            copy.quoted()
        ))?;
    }
    for (name, unique, rest) in &def.indexes {
        let name = quote_ident(&renamed(name, &table.name, &copy.name));
        let unique = if *unique { "UNIQUE " } else { "" };
        live.execute(&format!(
            "CREATE {unique}INDEX {name} ON {} {rest}",
            copy.quoted()
        ))?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_copy() {
        assert_eq!(
            renamed("orders_pkey", "orders", "orders_old"),
            "orders_old_pkey"
        );
        assert_eq!(
            renamed("by_status", "orders", "orders_old"),
            "orders_old_by_status"
        );
        let long = "x".repeat(60);
        let pkey = renamed("orders_pkey", "orders", &long);
        assert!(pkey.len() == 63 && pkey.ends_with("_pkey"), "{pkey}");
        let copy = "y".repeat(63);
        assert!(with_suffix(&copy, "_id_seq").ends_with("_id_seq"));
        assert_ne!(with_suffix(&copy, "_id_seq"), copy);
        assert_eq!(truncate("é".repeat(40), 63).len(), 62);
    }
}
