//! A backup over the replication protocol: `BASE_BACKUP` streams the data directory and
//! each tablespace as a tar archive, cut here into chunks on the fly, so pgkeep needs
//! no access to the server's files. An SQL session to the same server gives what the
//! stream lacks (catalog, snapshot, clock).
//!
//! Invariants: every file the server's own `backup_manifest` lists arrives with its size
//! and CRC32C, and nothing else arrives, or the backup is not published; the manifest
//! is stored in the backup, so that `pg_verifybackup` accepts a restored copy. The WAL
//! is not in the stream (`WAL` off, `WAIT false`): it comes from the archive or
//! receive-wal, as for local backups.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::{Buf, Bytes};

use super::CHUNK_SIZE;
use super::reader::{FileReader, store_file};
use super::source::{Server, Source, Start, Stop, epoch_to_time};
use crate::config::Encryption;
use crate::engine::physical::walk::{self, Relation};
use crate::engine::{Context, parallel_feed};
use crate::format::backup_manifest;
use crate::format::lsn::Lsn;
use crate::format::tar::{self, BLOCK};
use crate::pg::replication::{BackupPart, BaseBackupStart, Replication};
use crate::pg::session::{BackupStop, Session};
use crate::repo::ClusterInfo;
use crate::repo::chunk_store::ChunkWriter;
use crate::repo::manifest::{DatabaseEntry, DirectoryEntry, FileEntry, path_bytes};
use crate::repo::pack::ChunkId;

/// A server backed up over a replication connection.
pub struct Remote {
    session: Session,
    replication: Replication,
    server: Server,
    /// The current timeline's history file, read before the stream takes the connection.
    history: Option<(u32, String, Vec<u8>)>,
    started: Option<BaseBackupStart>,
    received: Option<Received>,
    dirs: Vec<DirectoryEntry>,
    wal_encrypted: bool,
}

/// What the stream held besides the files' chunks.
struct Received {
    label: String,
    tablespace_map: Option<String>,
    control: Vec<u8>,
    stop_lsn: Lsn,
    dirs: Vec<DirectoryEntry>,
}

/// A file's identity in the backup, shared by its chunks on their way to the workers.
struct Member {
    rel: String,
    raw: Option<Vec<u8>>,
    relation: Option<Relation>,
}

/// One chunk of a file, for a worker to check and store.
struct Piece {
    member: Arc<Member>,
    file: usize,
    index: usize,
    offset: u64,
    data: Vec<u8>,
}

/// A file as received: what the manifest entry needs besides its chunks.
struct ReceivedFile {
    member: Arc<Member>,
    size: u64,
    mode: u32,
    mtime: i64,
    crc: u32,
}

/// The files kept whole in memory as well, for the checks after the stream.
const KEPT: [&str; 3] = ["backup_label", "tablespace_map", "global/pg_control"];

impl Remote {
    /// Connects both ways to the cluster's server and checks it is the registered one.
    pub fn connect(ctx: &Context, info: &ClusterInfo) -> Result<Remote> {
        let mut session = ctx.connect()?;
        let server = Server::of(ctx, info, &mut session)?;
        let wal_encrypted = session.has_tde_wal_keys();
        if wal_encrypted && matches!(ctx.repo_config.encryption, Encryption::None) {
            bail!(
                "the server encrypts its WAL with pg_tde (it has pg_tde/wal_keys) and a remote backup \
                 needs WAL a replication connection sends decrypted, so it is not stored in this repository, \
                 which is not encrypted: use an encrypted repository, or a local backup"
            );
        }
        let mut replication = Replication::connect(&ctx.conn_params()?)?;
        let system = replication.identify_system()?;
        if system.system_identifier != server.system_identifier {
            bail!(
                "the replication connection reached database system {}, the SQL connection {}; \
                 give `connection` one server",
                system.system_identifier,
                server.system_identifier
            );
        }
        let history = match system.timeline {
            1 => None,
            t => {
                let (name, data) = replication.timeline_history(t)?;
                Some((t, name, data))
            }
        };
        Ok(Remote {
            session,
            replication,
            server,
            history,
            started: None,
            received: None,
            dirs: Vec::new(),
            wal_encrypted,
        })
    }

    /// Reads the stream to its end: every archive into `reader`, the manifest checked.
    fn receive(&mut self, reader: &FileReader, jobs: usize) -> Result<(Vec<FileEntry>, Received)> {
        let tablespaces: HashMap<String, u32> = (self.started.iter())
            .flat_map(|s| &s.tablespaces)
            .filter_map(|t| Some((t.location.clone(), t.oid?)))
            .collect();
        let replication = &mut self.replication;
        let store = |piece: Piece, _: &AtomicBool| {
            let member = &piece.member;
            let (id, bad) = reader.store_streamed(
                (&member.rel, member.raw.as_deref()),
                member.relation.as_ref(),
                (piece.index, piece.offset),
                &piece.data,
            )?;
            Ok((piece.file, piece.index, id, bad))
        };
        let produce = |send: &mut dyn FnMut(Piece) -> Result<()>| {
            let mut stream = Stream {
                files: Vec::new(),
                kept: HashMap::new(),
                dirs: Vec::new(),
                manifest: None,
            };
            let mut part = replication.next_backup_part()?;
            let end = loop {
                part = match part {
                    BackupPart::Archive { name, location } => {
                        let oid = match location.as_str() {
                            "" => None,
                            l => Some(*tablespaces.get(l).with_context(|| {
                                format!("the server sent archive {name} of a tablespace it did not announce")
                            })?),
                        };
                        let mut archive = Archive::new(replication);
                        stream.archive(&mut archive, oid, send)?;
                        archive.next_part()?
                    }
                    BackupPart::Manifest => {
                        let mut archive = Archive::new(replication);
                        let mut bytes = Vec::new();
                        archive.read_to_end(&mut bytes)?;
                        stream.manifest = Some(bytes);
                        archive.next_part()?
                    }
                    BackupPart::Progress(_) => replication.next_backup_part()?,
                    BackupPart::Data(_) => bail!("the server sent backup data outside an archive"),
                    BackupPart::End {
                        lsn,
                        checksum_failures,
                        ..
                    } => break (lsn, checksum_failures),
                };
            };
            Ok((stream, end))
        };
        let ((stream, (stop_lsn, checksum_failures)), pieces) =
            parallel_feed(jobs, produce, store)?;
        stream.check_manifest(self.server.system_identifier)?;
        if checksum_failures && pieces.iter().all(|p| p.3.is_empty()) {
            tracing::warn!(
                "the server reported pages with bad checksums that pgkeep did not find in what it sent; \
                 see the server's log, and run pg_amcheck"
            );
        }
        let manifest = stream.manifest.as_deref().unwrap_or_default();
        let mut entries = assemble(&stream.files, pieces);
        entries.push(store_file(
            reader.chunks,
            "backup_manifest",
            manifest,
            0o600,
            now(),
        )?);
        let mut kept = stream.kept;
        let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
        let mut dirs = stream.dirs;
        dirs.extend(tablespaces.values().map(|oid| DirectoryEntry {
            path: format!("pg_tblspc/{oid}"),
            path_bytes: None,
            mode: 0o700,
        }));
        dirs.sort_by(|a, b| a.path.cmp(&b.path));
        let received = Received {
            label: text(
                kept.remove("backup_label")
                    .context("the stream held no backup_label")?,
            ),
            tablespace_map: kept.remove("tablespace_map").map(text),
            control: kept
                .remove("global/pg_control")
                .context("the stream held no global/pg_control")?,
            stop_lsn,
            dirs,
        };
        Ok((entries, received))
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The manifest entries of the received files, from the chunks the workers stored.
fn assemble(
    files: &[ReceivedFile],
    pieces: Vec<(usize, usize, ChunkId, Vec<u32>)>,
) -> Vec<FileEntry> {
    let mut entries: Vec<FileEntry> = files
        .iter()
        .map(|f| FileEntry {
            path: f.member.rel.clone(),
            path_bytes: path_bytes(f.member.raw.as_deref()),
            size: f.size,
            mode: f.mode,
            mtime: f.mtime,
            chunks: vec![ChunkId([0; 32]); f.size.div_ceil(CHUNK_SIZE as u64) as usize],
            bad_blocks: Vec::new(),
        })
        .collect();
    for (file, index, id, bad) in pieces {
        entries[file].chunks[index] = id;
        entries[file].bad_blocks.extend(bad);
    }
    for entry in &mut entries {
        entry.bad_blocks.sort_unstable();
    }
    entries
}

/// What the stream's archives held, as it is read.
struct Stream {
    files: Vec<ReceivedFile>,
    kept: HashMap<String, Vec<u8>>,
    dirs: Vec<DirectoryEntry>,
    manifest: Option<Vec<u8>>,
}

impl Stream {
    /// Reads one tar archive, its members under `pg_tblspc/OID/` for a tablespace.
    fn archive(
        &mut self,
        archive: &mut Archive,
        tablespace: Option<u32>,
        send: &mut dyn FnMut(Piece) -> Result<()>,
    ) -> Result<()> {
        let mut block = [0u8; BLOCK];
        while read_block(archive, &mut block)? {
            if tar::is_end(&block) {
                std::io::copy(archive, &mut std::io::sink())?;
                break;
            }
            let header = tar::parse(&block)
                .map_err(|e| anyhow!("the server's tar stream is damaged: {e}"))?;
            let mut raw = header.name.clone();
            if let Some(oid) = tablespace {
                raw = [format!("pg_tblspc/{oid}/").as_bytes(), &raw].concat();
            }
            let rel = String::from_utf8_lossy(&raw).into_owned();
            let raw = std::str::from_utf8(&raw).is_err().then_some(raw);
            match header.kind {
                tar::Kind::Directory => self.dirs.push(DirectoryEntry {
                    path_bytes: path_bytes(raw.as_deref()),
                    path: rel,
                    mode: header.mode,
                }),
                // Tablespace links: the tablespace_map names them.
                tar::Kind::Symlink { .. } => {}
                tar::Kind::File => {
                    let member = Arc::new(Member {
                        relation: walk::relation_of(&rel),
                        rel,
                        raw,
                    });
                    self.file(archive, member, &header, send)?;
                }
            }
        }
        Ok(())
    }

    /// Reads one file's bytes and sends them on in chunks.
    fn file(
        &mut self,
        archive: &mut Archive,
        member: Arc<Member>,
        header: &tar::Header,
        send: &mut dyn FnMut(Piece) -> Result<()>,
    ) -> Result<()> {
        let file = self.files.len();
        let keep = KEPT.contains(&member.rel.as_str());
        let (mut offset, mut crc, mut kept) = (0u64, 0u32, Vec::new());
        while offset < header.size {
            let want = (CHUNK_SIZE as u64).min(header.size - offset) as usize;
            let mut data = vec![0u8; want];
            archive
                .read_exact(&mut data)
                .with_context(|| format!("the server's stream ended inside {}", member.rel))?;
            crc = crc32c::crc32c_append(crc, &data);
            if keep {
                kept.extend_from_slice(&data);
            }
            let index = (offset / CHUNK_SIZE as u64) as usize;
            send(Piece {
                member: member.clone(),
                file,
                index,
                offset,
                data,
            })?;
            offset += want as u64;
        }
        let mut padding = [0u8; BLOCK];
        archive
            .read_exact(&mut padding[..tar::padding(header.size)])
            .context("the server's stream ended inside a tar member's padding")?;
        if keep {
            self.kept.insert(member.rel.clone(), kept);
        }
        self.files.push(ReceivedFile {
            member,
            size: header.size,
            mode: header.mode,
            mtime: header.mtime,
            crc,
        });
        Ok(())
    }

    /// Checks the received files against the server's manifest, as `pg_verifybackup`
    /// checks a backup: the same files, each of its size and checksum.
    fn check_manifest(&self, system_identifier: u64) -> Result<()> {
        let fail = |why: String| {
            anyhow!(
                "the base backup does not match the server's backup_manifest: {why}; the backup was not published, run it again"
            )
        };
        let bytes = self
            .manifest
            .as_deref()
            .ok_or_else(|| fail("the server sent no manifest".into()))?;
        let manifest = backup_manifest::parse(bytes).map_err(|e| fail(e.to_string()))?;
        if manifest
            .system_identifier
            .is_some_and(|s| s != system_identifier)
        {
            return Err(fail("it names another database system".into()));
        }
        let mut received: HashMap<Vec<u8>, &ReceivedFile> = (self.files.iter())
            .map(|f| {
                (
                    f.member
                        .raw
                        .clone()
                        .unwrap_or_else(|| f.member.rel.clone().into_bytes()),
                    f,
                )
            })
            .collect();
        for listed in &manifest.files {
            let shown = String::from_utf8_lossy(&listed.path);
            let file = received
                .remove(&listed.path)
                .ok_or_else(|| fail(format!("{shown} did not arrive")))?;
            if file.size != listed.size {
                return Err(fail(format!(
                    "{shown} arrived with {} bytes, not {}",
                    file.size, listed.size
                )));
            }
            if listed.crc32c.is_some_and(|crc| crc != file.crc) {
                return Err(fail(format!(
                    "{shown} arrived with other contents (CRC32C)"
                )));
            }
        }
        match received.values().next() {
            Some(extra) => Err(fail(format!("{} is not in it", extra.member.rel))),
            None => Ok(()),
        }
    }
}

/// Reads one tar block; `false` at a clean end of the archive.
fn read_block(archive: &mut Archive, block: &mut [u8; BLOCK]) -> Result<bool> {
    let mut n = 0;
    while n < BLOCK {
        match archive.read(&mut block[n..])? {
            0 if n == 0 => return Ok(false),
            0 => bail!("the server's stream ended inside a tar header"),
            k => n += k,
        }
    }
    Ok(true)
}

/// The bytes of the archive (or manifest) being received, as a reader that ends where
/// the next part of the stream begins.
struct Archive<'r> {
    replication: &'r mut Replication,
    data: Bytes,
    after: Option<BackupPart>,
}

impl<'r> Archive<'r> {
    fn new(replication: &'r mut Replication) -> Archive<'r> {
        Archive {
            replication,
            data: Bytes::new(),
            after: None,
        }
    }

    /// The part that followed: the next archive, the manifest or the end.
    fn next_part(mut self) -> Result<BackupPart> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok(self
            .after
            .take()
            .expect("a drained archive has a part after it"))
    }
}

impl Read for Archive<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.data.is_empty() {
            if self.after.is_some() {
                return Ok(0);
            }
            match self.replication.next_backup_part() {
                Ok(BackupPart::Data(data)) => self.data = data,
                Ok(BackupPart::Progress(_)) => {}
                Ok(other) => self.after = Some(other),
                Err(e) => return Err(std::io::Error::other(format!("{e:#}"))),
            }
        }
        let n = buf.len().min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data.advance(n);
        Ok(n)
    }
}

/// `'text'` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl Source for Remote {
    fn server(&self) -> &Server {
        &self.server
    }

    fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    fn timeline_history(&mut self, timeline: u32) -> Result<Option<(String, Vec<u8>)>> {
        Ok(match &self.history {
            Some((t, name, data)) if *t == timeline => Some((name.clone(), data.clone())),
            _ => None,
        })
    }

    fn start(&mut self, label: &str) -> Result<Start> {
        let time = epoch_to_time(self.session.now()?);
        let started = self.replication.base_backup(&format!(
            "LABEL {}, PROGRESS, CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', TABLESPACE_MAP",
            literal(label)
        ))?;
        let databases = (self.session.databases()?.into_iter())
            .map(|(oid, name)| DatabaseEntry { oid, name })
            .collect();
        let start = Start {
            lsn: started.lsn,
            timeline: started.timeline,
            time,
            databases,
        };
        self.started = Some(started);
        Ok(start)
    }

    fn size(&self) -> u64 {
        (self.started.iter())
            .flat_map(|s| &s.tablespaces)
            .filter_map(|t| t.size)
            .sum()
    }

    fn copy(&mut self, reader: &FileReader, jobs: usize) -> Result<Vec<FileEntry>> {
        let (entries, mut received) = self.receive(reader, jobs)?;
        self.dirs = std::mem::take(&mut received.dirs);
        self.received = Some(received);
        Ok(entries)
    }

    fn stop(&mut self, _: &ChunkWriter) -> Result<Stop> {
        let received = self
            .received
            .take()
            .context("the stream was not received")?;
        Ok(Stop {
            entries: Vec::new(),
            stop: BackupStop {
                stop_lsn: received.stop_lsn,
                label_file: received.label,
                tablespace_map: received.tablespace_map,
            },
            snapshot: self.session.snapshot()?,
            time: self.session.now()?,
            control: received.control,
        })
    }

    fn directories(&self) -> Vec<DirectoryEntry> {
        self.dirs.clone()
    }

    fn wal_encrypted(&self) -> bool {
        self.wal_encrypted
    }

    fn skips_unchanged(&self) -> bool {
        false
    }
}
