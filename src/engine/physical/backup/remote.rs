//! A backup over the replication protocol: `BASE_BACKUP` streams the data directory and
//! each tablespace as a tar archive, cut here into chunks on the fly, so pgkeep needs
//! no access to the server's files. An SQL session to the same server gives what the
//! stream lacks (catalog, snapshot, clock).
//!
//! Invariants: every file the server's own `backup_manifest` lists arrives with its size
//! and CRC32C, and nothing else arrives, or the backup is not published; the backup
//! holds a `backup_manifest` of its files (the server's, or for one the server sent as
//! changes since the parent, pgkeep's of the rebuilt files), so that `pg_verifybackup`
//! accepts a restored copy. What is stored is always a full backup: incremental files
//! are rebuilt onto the parent's chunks before they are stored. The WAL is not in the
//! stream (`WAL` off, `WAIT false`): it comes from the archive or receive-wal, as for
//! local backups.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::{Buf, Bytes};

use super::CHUNK_SIZE;
use super::parent::{Parent, server_manifest};
use super::reader::{FileReader, Patch, store_file};
use super::source::{Server, Source, Start, Stop, epoch_to_time};
use crate::config::Encryption;
use crate::engine::physical::walk::{self, Relation};
use crate::engine::{Context, parallel_feed};
use crate::format::backup_manifest;
use crate::format::incremental;
use crate::format::label;
use crate::format::lsn::Lsn;
use crate::format::page::PAGE_SIZE;
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
    /// The timeline the server was on when connected.
    timeline: u32,
    /// The current timeline's history file, read before the stream takes the connection.
    history: Option<(u32, String, Vec<u8>)>,
    /// Whether the server sends relation files as changes since the parent.
    incremental: bool,
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
    data: PieceData,
}

enum PieceData {
    Whole(Vec<u8>),
    /// The blocks of the chunk the server sent, the rest to be taken from the parent.
    Changed(Patch),
}

/// A file as received: what the manifest entry needs besides its chunks, and what the
/// server's manifest lists (an incremental file's own name and size).
struct ReceivedFile {
    member: Arc<Member>,
    size: u64,
    mode: u32,
    mtime: i64,
    listed: Vec<u8>,
    listed_size: u64,
    crc: u32,
}

/// The files kept whole in memory, for the checks after the stream, and stored then.
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
            timeline: system.timeline,
            history,
            incremental: false,
            started: None,
            received: None,
            dirs: Vec::new(),
            wal_encrypted,
        })
    }

    /// The parent the server can send changes since: PostgreSQL 17+ summarizing WAL.
    fn sends_changes<'p>(&mut self, parent: Option<&'p Parent>) -> Result<Option<&'p Parent>> {
        let Some(parent) = parent else {
            return Ok(None);
        };
        if self.server.version_num < 170000 {
            return Ok(None);
        }
        if self.session.setting("summarize_wal")? != "on" {
            tracing::info!(
                "summarize_wal is off, so the server sends every file; set summarize_wal = on to have it send only the blocks changed since backup {}",
                parent.label
            );
            return Ok(None);
        }
        Ok(Some(parent))
    }

    /// Starts a backup in which the server sends relation files as the blocks changed
    /// since `parent`, whose manifest it is given first.
    fn start_incremental(&mut self, parent: &Parent, options: &str) -> Result<BaseBackupStart> {
        let manifest = parent.server_manifest(self.server.system_identifier);
        self.replication.upload_manifest(&manifest)?;
        let started = self
            .replication
            .base_backup(&format!("{options}, INCREMENTAL"))?;
        tracing::info!(
            "the server sends the blocks changed since backup {}",
            parent.label
        );
        Ok(started)
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
            let name = (&member.rel[..], member.raw.as_deref());
            let at = (piece.index, piece.offset);
            let relation = member.relation.as_ref();
            let (id, bad) = match &piece.data {
                PieceData::Whole(data) => reader.store_streamed(name, relation, at, data)?,
                PieceData::Changed(patch) => reader.store_patched(name, relation, at, patch)?,
            };
            Ok((piece.file, piece.index, id, bad))
        };
        let produce = |send: &mut dyn FnMut(Piece) -> Result<()>| {
            let mut stream = Stream {
                incremental: self.incremental,
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
        let mut entries = assemble(&stream.files, pieces);
        entries.retain(|e| !walk::RECOVERY_SIGNALS.contains(&e.path.as_str()));
        let mut kept = stream.kept;
        if let Some(label) = kept.get_mut("backup_label").filter(|_| self.incremental) {
            *label = label::reconstructed(&String::from_utf8_lossy(label)).into_bytes();
        }
        for entry in &mut entries {
            if let Some(data) = kept.get(&entry.path) {
                *entry = store_file(reader.chunks, &entry.path, data, entry.mode, entry.mtime)?;
            }
        }
        // The server's manifest of an incremental backup lists the incremental files:
        // the backup gets one of the files as restored instead.
        let manifest = match (self.incremental, &self.started) {
            (true, Some(s)) => {
                let wal = (s.timeline, s.lsn, stop_lsn);
                server_manifest(self.server.system_identifier, entries.iter(), wal)
            }
            _ => stream.manifest.clone().unwrap_or_default(),
        };
        entries.push(store_file(
            reader.chunks,
            "backup_manifest",
            &manifest,
            0o600,
            now(),
        )?);
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
    /// Whether the server sends relation files as changes (`INCREMENTAL.*`).
    incremental: bool,
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
            match header.kind {
                tar::Kind::Directory => self.dirs.push(DirectoryEntry {
                    path: String::from_utf8_lossy(&raw).into_owned(),
                    path_bytes: path_bytes(std::str::from_utf8(&raw).is_err().then_some(&raw)),
                    mode: header.mode,
                }),
                // Tablespace links: the tablespace_map names them.
                tar::Kind::Symlink { .. } => {}
                tar::Kind::File => match incremental_target(&raw).filter(|_| self.incremental) {
                    Some(target) => {
                        self.incremental_file(archive, member_at(target), raw, &header, send)?
                    }
                    None => self.file(archive, member_at(raw), &header, send)?,
                },
            }
        }
        Ok(())
    }

    /// Reads an incremental file (`dir/INCREMENTAL.name`) and sends on, per chunk of the
    /// file it stands for, the blocks it holds there.
    fn incremental_file(
        &mut self,
        archive: &mut Archive,
        member: Arc<Member>,
        listed: Vec<u8>,
        tar_header: &tar::Header,
        send: &mut dyn FnMut(Piece) -> Result<()>,
    ) -> Result<()> {
        let shown = String::from_utf8_lossy(&listed).into_owned();
        let mut crc = 0u32;
        let mut read = |len: usize| -> Result<Vec<u8>> {
            let data = read_member(archive, len, &shown)?;
            crc = crc32c::crc32c_append(crc, &data);
            Ok(data)
        };
        let header = incremental_header(&mut read, &shown, tar_header.size)?;
        let size = header.reconstructed_len();
        tracing::debug!(
            "{shown}: {} changed blocks of a {size}-byte file",
            header.blocks.len()
        );
        let file = self.files.len();
        let mut changed = header.blocks.iter().peekable();
        for index in 0..size.div_ceil(CHUNK_SIZE as u64) as usize {
            let offset = (index * CHUNK_SIZE) as u64;
            let len = (CHUNK_SIZE as u64).min(size - offset) as usize;
            let end = ((offset + len as u64) / PAGE_SIZE as u64) as u32;
            let mut blocks = Vec::new();
            while let Some(&block) = changed.next_if(|&&b| b < end) {
                blocks.push((block, read(PAGE_SIZE)?));
            }
            send(Piece {
                member: member.clone(),
                file,
                index,
                offset,
                data: PieceData::Changed(Patch {
                    len,
                    truncation_block_length: header.truncation_block_length,
                    blocks,
                }),
            })?;
        }
        skip_padding(archive, tar_header.size)?;
        self.files.push(ReceivedFile {
            member,
            size,
            mode: tar_header.mode,
            mtime: tar_header.mtime,
            listed,
            listed_size: tar_header.size,
            crc,
        });
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
            let data = read_member(archive, want, &member.rel)?;
            crc = crc32c::crc32c_append(crc, &data);
            let at = offset;
            offset += want as u64;
            match keep {
                true => kept.extend_from_slice(&data),
                false => send(Piece {
                    member: member.clone(),
                    file,
                    index: (at / CHUNK_SIZE as u64) as usize,
                    offset: at,
                    data: PieceData::Whole(data),
                })?,
            }
        }
        skip_padding(archive, header.size)?;
        if keep {
            self.kept.insert(member.rel.clone(), kept);
        }
        self.files.push(ReceivedFile {
            listed: (member.raw.clone()).unwrap_or_else(|| member.rel.clone().into_bytes()),
            listed_size: header.size,
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
        let mut received: HashMap<&[u8], &ReceivedFile> =
            (self.files.iter()).map(|f| (&f.listed[..], f)).collect();
        for listed in &manifest.files {
            let shown = String::from_utf8_lossy(&listed.path);
            let file = received
                .remove(&listed.path[..])
                .ok_or_else(|| fail(format!("{shown} did not arrive")))?;
            if file.listed_size != listed.size {
                return Err(fail(format!(
                    "{shown} arrived with {} bytes, not {}",
                    file.listed_size, listed.size
                )));
            }
            if listed.crc32c.is_some_and(|crc| crc != file.crc) {
                return Err(fail(format!(
                    "{shown} arrived with other contents (CRC32C)"
                )));
            }
        }
        match received.values().next() {
            Some(extra) => Err(fail(format!(
                "{} is not in it",
                String::from_utf8_lossy(&extra.listed)
            ))),
            None => Ok(()),
        }
    }
}

/// The header of an incremental file of `size` bytes, through `read` (the member's
/// next bytes), checked against that size before its block numbers are read.
fn incremental_header(
    read: &mut impl FnMut(usize) -> Result<Vec<u8>>,
    shown: &str,
    size: u64,
) -> Result<incremental::Header> {
    if size < 12 {
        bail!("the server sent {shown} with {size} bytes, too few for an incremental file");
    }
    let damaged = |e: incremental::HeaderError| anyhow!("the server sent {shown} damaged: {e}");
    let fixed = incremental::parse_fixed(read(12)?[..].try_into().unwrap()).map_err(damaged)?;
    let count = fixed.0;
    if incremental::file_len(count) != size {
        bail!(
            "the server sent {shown} as {size} bytes, but its header describes {}",
            incremental::file_len(count)
        );
    }
    let header = incremental::parse_blocks(fixed, &read(count as usize * 4)?).map_err(damaged)?;
    read((incremental::header_len(count) - 12 - 4 * count as u64) as usize)?;
    Ok(header)
}

/// The next `len` bytes of member `rel`.
fn read_member(archive: &mut Archive, len: usize, rel: &str) -> Result<Vec<u8>> {
    archive
        .read_vec(len)
        .with_context(|| format!("cannot read {rel} from the server's stream"))?
        .with_context(|| format!("the server's stream ended inside {rel}"))
}

/// Reads the padding after a tar member of `size` bytes.
fn skip_padding(archive: &mut Archive, size: u64) -> Result<()> {
    let mut padding = [0u8; BLOCK];
    archive
        .read_exact(&mut padding[..tar::padding(size)])
        .context("the server's stream ended inside a tar member's padding")
}

/// The member for a file at path `raw` in the backup.
fn member_at(raw: Vec<u8>) -> Arc<Member> {
    let rel = String::from_utf8_lossy(&raw).into_owned();
    Arc::new(Member {
        relation: walk::relation_of(&rel),
        raw: std::str::from_utf8(&raw).is_err().then_some(raw),
        rel,
    })
}

/// The relation file an incremental file `dir/INCREMENTAL.name` stands for: `dir/name`.
/// The server sends only relation files so; any other name is an ordinary file's.
fn incremental_target(path: &[u8]) -> Option<Vec<u8>> {
    let name_at = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    let name = path[name_at..].strip_prefix(incremental::PREFIX.as_bytes())?;
    let target = [&path[..name_at], name].concat();
    walk::relation_of(std::str::from_utf8(&target).ok()?).map(|_| target)
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

impl Archive<'_> {
    /// Makes `data` hold the next bytes; `false` at the archive's end.
    fn fill(&mut self) -> std::io::Result<bool> {
        while self.data.is_empty() {
            if self.after.is_some() {
                return Ok(false);
            }
            match self.replication.next_backup_part() {
                Ok(BackupPart::Data(data)) => self.data = data,
                Ok(BackupPart::Progress(_)) => {}
                Ok(other) => self.after = Some(other),
                Err(e) => return Err(std::io::Error::other(format!("{e:#}"))),
            }
        }
        Ok(true)
    }

    /// The next `len` bytes, copied from the messages as they come (not into a zeroed
    /// buffer first: this is every byte of the backup); `None` if the archive ends first.
    fn read_vec(&mut self, len: usize) -> std::io::Result<Option<Vec<u8>>> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            if !self.fill()? {
                return Ok(None);
            }
            let n = (len - out.len()).min(self.data.len());
            out.extend_from_slice(&self.data[..n]);
            self.data.advance(n);
        }
        Ok(Some(out))
    }
}

impl Read for Archive<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.fill()? {
            return Ok(0);
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

    fn timeline_before_start(&self) -> Option<u32> {
        Some(self.timeline)
    }

    fn start(&mut self, label: &str, parent: Option<&Parent>) -> Result<Start> {
        let time = epoch_to_time(self.session.now()?);
        let options = format!(
            "LABEL {}, PROGRESS, CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', TABLESPACE_MAP",
            literal(label)
        );
        let started = match self.sends_changes(parent)? {
            Some(parent) => match self.start_incremental(parent, &options) {
                Ok(started) => {
                    self.incremental = true;
                    started
                }
                Err(e) => {
                    tracing::warn!("{e:#}; the server sends every file instead");
                    self.replication.base_backup(&options)?
                }
            },
            None => self.replication.base_backup(&options)?,
        };
        let databases = (self.session.databases()?.into_iter())
            .map(|(oid, name)| DatabaseEntry { oid, name })
            .collect();
        let start = Start {
            lsn: started.lsn,
            timeline: started.timeline,
            time,
            databases,
            from_parent: self.incremental,
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
