//! `BASE_BACKUP` (PostgreSQL 15+): two result sets (start position, tablespaces), then
//! one COPY OUT stream whose messages start an archive (`n`), start the manifest (`m`),
//! carry their bytes (`d`) or report progress (`p`), then a result set with the end
//! position.

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::{Buf, Bytes};
use postgres_protocol::message::frontend;

use super::{Replication, data_row, error_text};
use crate::format::lsn::Lsn;

/// A tablespace as `BASE_BACKUP` announces it.
pub struct StreamedTablespace {
    /// `None` for the data directory.
    pub oid: Option<u32>,
    pub location: String,
    /// Approximate bytes, with `PROGRESS`.
    pub size: Option<u64>,
}

/// What the server answers before the stream.
pub struct BaseBackupStart {
    pub lsn: Lsn,
    pub timeline: u32,
    pub tablespaces: Vec<StreamedTablespace>,
}

/// One message of the stream.
pub enum BackupPart {
    /// A tar archive begins: `base.tar` (location empty) or `OID.tar` of a tablespace.
    Archive { name: String, location: String },
    /// The backup manifest begins.
    Manifest,
    /// Bytes of the current archive or manifest.
    Data(Bytes),
    /// Bytes of the current tablespace done so far.
    Progress(u64),
    /// The stream ended; the WAL from the start to `lsn` makes the copy consistent.
    /// `checksum_failures` when the server found pages whose checksum fails (it then
    /// ends the command with an error, after sending everything).
    End {
        lsn: Lsn,
        timeline: u32,
        checksum_failures: bool,
    },
}

type Rows = Vec<Vec<Option<String>>>;

/// SQLSTATE `data_corrupted`: how `basebackup.c` ends a backup that found bad checksums.
const DATA_CORRUPTED: &str = "XX001";

/// The SQLSTATE of an ErrorResponse.
fn error_code(body: &[u8]) -> Option<&str> {
    body.split(|b| *b == 0)
        .find(|field| field.first() == Some(&b'C'))
        .and_then(|field| std::str::from_utf8(&field[1..]).ok())
}

impl Replication {
    /// Sends `BASE_BACKUP (options)` and reads up to the start of its stream.
    pub fn base_backup(&mut self, options: &str) -> Result<BaseBackupStart> {
        let sql = format!("BASE_BACKUP ({options})");
        frontend::query(&sql, &mut self.outgoing)?;
        self.send()?;
        let (mut sets, mut error): (Vec<Rows>, _) = (Vec::new(), None);
        loop {
            let message = self.receive()?;
            match message.tag {
                b'T' => sets.push(Vec::new()),
                b'D' => sets
                    .last_mut()
                    .context("BASE_BACKUP sent a row before its columns")?
                    .push(data_row(message.body)?),
                b'H' => break,
                // The connection stays usable: the error is read up to ReadyForQuery.
                b'E' => error = Some(error_text(&message.body)),
                b'Z' => match error {
                    Some(e) => bail!("BASE_BACKUP failed on {}: {e}", self.server),
                    None => bail!(
                        "BASE_BACKUP on {} ended without sending a backup",
                        self.server
                    ),
                },
                b'N' => self.notice(&message.body),
                _ => {}
            }
        }
        let [start, tablespaces] = <[Rows; 2]>::try_from(sets).map_err(|_| {
            anyhow!(
                "BASE_BACKUP on {} did not start as PostgreSQL 15+ does",
                self.server
            )
        })?;
        let (lsn, timeline) = position(&start)?;
        let tablespaces = tablespaces
            .into_iter()
            .map(|row| {
                let field = |i: usize| row.get(i).cloned().flatten();
                Ok(StreamedTablespace {
                    oid: field(0).map(|o| o.parse()).transpose()?,
                    location: field(1).unwrap_or_default(),
                    size: field(2)
                        .and_then(|s| s.parse::<u64>().ok())
                        .map(|kb| kb * 1024),
                })
            })
            .collect::<Result<_, std::num::ParseIntError>>()
            .context("BASE_BACKUP named a bad tablespace")?;
        Ok(BaseBackupStart {
            lsn,
            timeline,
            tablespaces,
        })
    }

    /// Gives the server the manifest of a prior backup (PostgreSQL 17+), for a
    /// `BASE_BACKUP (INCREMENTAL)` on this connection.
    pub fn upload_manifest(&mut self, manifest: &[u8]) -> Result<()> {
        frontend::query("UPLOAD_MANIFEST", &mut self.outgoing)?;
        self.send()?;
        let mut error = None;
        loop {
            let message = self.receive()?;
            match message.tag {
                b'G' => break,
                b'E' => error = Some(error_text(&message.body)),
                b'Z' => bail!(
                    "UPLOAD_MANIFEST failed on {}: {}",
                    self.server,
                    error.unwrap_or_else(|| "no COPY was started".into())
                ),
                _ => {}
            }
        }
        for piece in manifest.chunks(64 * 1024) {
            frontend::CopyData::new(piece)?.write(&mut self.outgoing);
        }
        frontend::copy_done(&mut self.outgoing);
        self.send()?;
        self.results("UPLOAD_MANIFEST")?;
        Ok(())
    }

    /// The next message of the stream started by [`Replication::base_backup`].
    pub fn next_backup_part(&mut self) -> Result<BackupPart> {
        loop {
            let message = self.receive()?;
            match message.tag {
                b'd' => return self.backup_part(message.body),
                b'c' => return self.backup_end(),
                b'E' => bail!(
                    "the base backup from {} failed: {}",
                    self.server,
                    error_text(&message.body)
                ),
                b'N' => self.notice(&message.body),
                _ => {}
            }
        }
    }

    /// The result set after the stream, and its one tolerated error.
    fn backup_end(&mut self) -> Result<BackupPart> {
        let (mut rows, mut checksum_failures) = (Vec::new(), false);
        loop {
            let message = self.receive()?;
            match message.tag {
                b'T' => rows.clear(),
                b'D' => rows.push(data_row(message.body)?),
                b'E' if error_code(&message.body) == Some(DATA_CORRUPTED) => {
                    checksum_failures = true
                }
                b'E' => bail!(
                    "the base backup from {} failed at its end: {}",
                    self.server,
                    error_text(&message.body)
                ),
                b'N' => self.notice(&message.body),
                b'Z' => break,
                _ => {}
            }
        }
        let (lsn, timeline) = position(&rows)?;
        Ok(BackupPart::End {
            lsn,
            timeline,
            checksum_failures,
        })
    }

    fn backup_part(&self, mut body: Bytes) -> Result<BackupPart> {
        let malformed = || {
            anyhow!(
                "{} sent a base backup message pgkeep does not know",
                self.server
            )
        };
        if body.is_empty() {
            return Err(malformed());
        }
        match body.get_u8() {
            b'd' => Ok(BackupPart::Data(body)),
            b'm' => Ok(BackupPart::Manifest),
            b'p' if body.len() == 8 => Ok(BackupPart::Progress(body.get_u64())),
            b'n' => {
                let mut strings = body
                    .split(|&b| b == 0)
                    .map(|s| String::from_utf8_lossy(s).into_owned());
                let name = strings.next().ok_or_else(malformed)?;
                let location = strings.next().ok_or_else(malformed)?;
                Ok(BackupPart::Archive { name, location })
            }
            _ => Err(malformed()),
        }
    }

    /// A notice (a warning of the backup) goes to the log.
    fn notice(&self, body: &[u8]) {
        tracing::warn!("{}: {}", self.server, error_text(body));
    }
}

/// A row of (LSN, timeline), as the start and end of a base backup are given.
fn position(rows: &Rows) -> Result<(Lsn, u32)> {
    match rows.first().map(|r| r.as_slice()) {
        Some([Some(lsn), Some(timeline)]) => Ok((
            lsn.parse()
                .map_err(|_| anyhow!("BASE_BACKUP returned a bad position {lsn}"))?,
            timeline
                .parse()
                .context("BASE_BACKUP returned a bad timeline")?,
        )),
        _ => bail!("BASE_BACKUP returned no position"),
    }
}
