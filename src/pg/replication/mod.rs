//! A physical replication connection (`replication=true`): the walsender's commands over
//! the simple query protocol, the COPY BOTH stream of `START_REPLICATION`, and the COPY
//! OUT stream of `BASE_BACKUP` (in `base_backup`).
//!
//! No maintained Rust client speaks this: tokio-postgres has no replication mode, and
//! postgres-protocol's message parser does not know CopyBothResponse. So this is a small
//! blocking client of its own: postgres-protocol writes the frontend messages and does
//! SCRAM-SHA-256 and md5; the few backend messages a walsender sends are read here.
//!
//! Invariant: a message leaves the input buffer only when it is whole, so a read that
//! times out (the caller's cue to send a status update) never loses part of one.

mod base_backup;

pub use self::base_backup::{BackupPart, BaseBackupStart, StreamedTablespace};

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;

use super::conninfo::ConnParams;
use super::tls::{self, Need, Tls};
use crate::format::lsn::Lsn;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01), for status updates.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// The longest message taken from a server (a walsender's are at most about 128 KiB).
const MAX_MESSAGE: usize = 64 << 20;

/// How long a TCP connect may take when `connect_timeout` is not set.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A byte stream to the server: TCP or a Unix socket.
trait Wire: Read + Write + Send {
    fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl Wire for TcpStream {
    fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(timeout)
    }
}

impl Wire for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }
}

impl Wire for UnixStream {
    fn set_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(timeout)
    }
}

/// One replication connection.
pub struct Replication {
    wire: Box<dyn Wire>,
    incoming: BytesMut,
    outgoing: BytesMut,
    /// `host:port` for messages.
    server: String,
    pub version_num: u32,
}

/// A backend message: its type byte and body.
struct Message {
    tag: u8,
    body: Bytes,
}

/// What `IDENTIFY_SYSTEM` answers.
pub struct SystemId {
    pub system_identifier: u64,
    pub timeline: u32,
    /// The server's current flush position (replay position on a standby).
    pub position: Lsn,
}

/// A physical slot as `READ_REPLICATION_SLOT` shows it.
pub struct SlotState {
    pub physical: bool,
    pub restart_lsn: Option<Lsn>,
    pub restart_timeline: Option<u32>,
}

/// What `START_REPLICATION` (and then the stream) gives.
pub enum Streamed {
    /// WAL beginning at `start`; the server's WAL ends at `server_end`.
    Wal {
        start: Lsn,
        server_end: Lsn,
        data: Bytes,
    },
    /// A keepalive; `reply` when the server wants a status update now.
    Keepalive { server_end: Lsn, reply: bool },
    /// Nothing arrived within the timeout.
    Idle,
    /// The requested timeline ended: streaming goes on at `start` on `timeline`.
    TimelineEnd { timeline: u32, start: Lsn },
}

impl Replication {
    /// Connects to the first server of `params` that accepts a replication connection.
    pub fn connect(params: &ConnParams) -> Result<Replication> {
        params.first_reachable(Replication::connect_one)
    }

    /// Connects to the one server `params` names.
    fn connect_one(params: &ConnParams) -> Result<Replication> {
        let host = params.hosts[0].as_str();
        let port = params.ports[0];
        let server = format!("{host}:{port}");
        let fail = |why: String| {
            anyhow!(
                "cannot open a replication connection to PostgreSQL at {server} as user '{}': {why}; \
                 check `connection` in the pgkeep config, that the server runs, and that pg_hba.conf \
                 has a `replication` line for this user",
                params.user
            )
        };
        let tls = Tls::for_host(params, host)?;
        let wire = open_wire(host, port, params.connect_timeout, &tls)
            .map_err(|e| fail(format!("{e:#}")))?;
        let mut conn = Replication {
            wire,
            incoming: BytesMut::with_capacity(256 * 1024),
            outgoing: BytesMut::new(),
            server: server.clone(),
            version_num: 0,
        };
        conn.start_up(params).map_err(|e| fail(format!("{e:#}")))?;
        let version = conn.query("SHOW server_version_num")?;
        conn.version_num = single_value(&version)
            .and_then(|v| v.parse().ok())
            .context("the server did not report its version")?;
        if conn.version_num < 150000 {
            bail!(
                "PostgreSQL {} is not supported; pgkeep needs PostgreSQL 15 or newer",
                conn.version_num / 10000
            );
        }
        Ok(conn)
    }

    /// Sends the startup message and answers the server's authentication requests.
    fn start_up(&mut self, params: &ConnParams) -> Result<()> {
        let mut startup: Vec<(&str, &str)> = vec![
            ("user", &params.user),
            ("database", &params.dbname),
            ("application_name", &params.application_name),
            ("replication", "true"),
        ];
        if let Some(options) = &params.options {
            startup.push(("options", options));
        }
        frontend::startup_message(startup, &mut self.outgoing)?;
        self.send()?;
        let mut scram = None;
        loop {
            let message = self.receive()?;
            match message.tag {
                b'R' => self.authenticate(params, message.body, &mut scram)?,
                b'E' => bail!("{}", error_text(&message.body)),
                b'Z' => return Ok(()),
                _ => {} // ParameterStatus, BackendKeyData, notices
            }
        }
    }

    /// Answers one authentication request.
    fn authenticate(
        &mut self,
        params: &ConnParams,
        mut body: Bytes,
        scram: &mut Option<sasl::ScramSha256>,
    ) -> Result<()> {
        if body.len() < 4 {
            bail!("the server sent a malformed authentication request");
        }
        let code = body.get_i32();
        let password = || {
            params.password.as_deref().ok_or_else(|| {
                anyhow!(
                    "the server asks for a password and none is set (put it in ~/.pgpass, PGPASSWORD or the connection string)"
                )
            })
        };
        match code {
            0 => return Ok(()),
            3 => frontend::password_message(password()?.as_bytes(), &mut self.outgoing)?,
            5 => {
                if body.len() < 4 {
                    bail!("the server sent a malformed md5 request");
                }
                let salt = [body[0], body[1], body[2], body[3]];
                let hash = md5_hash(params.user.as_bytes(), password()?.as_bytes(), salt);
                frontend::password_message(hash.as_bytes(), &mut self.outgoing)?;
            }
            10 => {
                let offered: Vec<&[u8]> = body.split(|b| *b == 0).collect();
                if !offered.contains(&sasl::SCRAM_SHA_256.as_bytes()) {
                    bail!(
                        "the server offers no SASL mechanism pgkeep knows (it knows SCRAM-SHA-256)"
                    );
                }
                let exchange = sasl::ScramSha256::new(
                    password()?.as_bytes(),
                    sasl::ChannelBinding::unsupported(),
                );
                frontend::sasl_initial_response(
                    sasl::SCRAM_SHA_256,
                    exchange.message(),
                    &mut self.outgoing,
                )?;
                *scram = Some(exchange);
            }
            11 | 12 => {
                let exchange = scram
                    .as_mut()
                    .context("the server continued a SASL exchange that was never started")?;
                if code == 11 {
                    exchange
                        .update(&body)
                        .context("SCRAM authentication failed")?;
                    frontend::sasl_response(exchange.message(), &mut self.outgoing)?;
                } else {
                    exchange
                        .finish(&body)
                        .context("the server's SCRAM signature is wrong")?;
                    return Ok(());
                }
            }
            other => bail!(
                "the server asks for authentication method {other}, which pgkeep does not support \
                 (it supports trust, password, md5 and scram-sha-256)"
            ),
        }
        self.send()
    }

    /// Runs one command and returns the rows of its last result set as text.
    pub fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        frontend::query(sql, &mut self.outgoing)?;
        self.send()?;
        self.results(sql)
    }

    /// Reads result sets up to ReadyForQuery.
    fn results(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        self.results_after(sql, None)
    }

    /// As [`Replication::results`], `first` being a message already taken.
    fn results_after(
        &mut self,
        sql: &str,
        mut first: Option<Message>,
    ) -> Result<Vec<Vec<Option<String>>>> {
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let message = match first.take() {
                Some(message) => message,
                None => self.receive()?,
            };
            match message.tag {
                b'T' => rows.clear(),
                b'D' => rows.push(data_row(message.body)?),
                b'E' => error = Some(error_text(&message.body)),
                b'Z' => break,
                b'H' | b'G' | b'W' => {
                    bail!("{sql}: the server started a COPY pgkeep did not ask for")
                }
                _ => {} // CommandComplete, EmptyQueryResponse, notices
            }
        }
        match error {
            Some(e) => bail!("{sql} failed on {}: {e}", self.server),
            None => Ok(rows),
        }
    }

    pub fn identify_system(&mut self) -> Result<SystemId> {
        let rows = self.query("IDENTIFY_SYSTEM")?;
        let row = rows.first().context("IDENTIFY_SYSTEM returned no row")?;
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        Ok(SystemId {
            system_identifier: field(0)
                .parse()
                .context("IDENTIFY_SYSTEM returned a bad system identifier")?,
            timeline: field(1)
                .parse()
                .context("IDENTIFY_SYSTEM returned a bad timeline")?,
            position: field(2)
                .parse()
                .map_err(|_| anyhow!("IDENTIFY_SYSTEM returned a bad position"))?,
        })
    }

    /// The history file of `timeline`: its name and content.
    pub fn timeline_history(&mut self, timeline: u32) -> Result<(String, Vec<u8>)> {
        let rows = self.query(&format!("TIMELINE_HISTORY {timeline}"))?;
        match rows.first().map(|r| r.as_slice()) {
            Some([Some(name), Some(content)]) => Ok((name.clone(), content.clone().into_bytes())),
            _ => bail!("TIMELINE_HISTORY {timeline} returned no file"),
        }
    }

    /// The slot's state; `None` if it does not exist.
    pub fn read_slot(&mut self, slot: &str) -> Result<Option<SlotState>> {
        let rows = self.query(&format!("READ_REPLICATION_SLOT {}", quote(slot)))?;
        let row = rows
            .first()
            .context("READ_REPLICATION_SLOT returned no row")?;
        let field = |i: usize| row.get(i).cloned().flatten();
        let Some(kind) = field(0) else {
            return Ok(None);
        };
        Ok(Some(SlotState {
            physical: kind == "physical",
            restart_lsn: field(1).and_then(|l| l.parse().ok()),
            restart_timeline: field(2).and_then(|t| t.parse().ok()),
        }))
    }

    /// Creates physical slot `slot`, reserving WAL from now on.
    pub fn create_slot(&mut self, slot: &str) -> Result<()> {
        self.query(&format!(
            "CREATE_REPLICATION_SLOT {} PHYSICAL (RESERVE_WAL)",
            quote(slot)
        ))?;
        Ok(())
    }

    /// Starts streaming `timeline` from `start` over `slot`: `None` once the stream is
    /// on, or the next timeline and its start when `timeline` ends exactly at `start`
    /// (the server then skips COPY mode and answers at once).
    pub fn start_replication(
        &mut self,
        slot: &str,
        timeline: u32,
        start: Lsn,
    ) -> Result<Option<(u32, Lsn)>> {
        let sql = format!(
            "START_REPLICATION SLOT {} PHYSICAL {start} TIMELINE {timeline}",
            quote(slot)
        );
        frontend::query(&sql, &mut self.outgoing)?;
        self.send()?;
        loop {
            let message = self.receive()?;
            match message.tag {
                b'W' => return Ok(None),
                b'E' => bail!(
                    "{sql} failed on {}: {}",
                    self.server,
                    error_text(&message.body)
                ),
                b'T' | b'D' => {
                    let rows = self.results_after(&sql, Some(message))?;
                    return self.next_timeline(&rows).map(Some);
                }
                _ => {}
            }
        }
    }

    /// The next streamed message, waiting up to `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<Streamed> {
        loop {
            let Some(message) = self.receive_within(timeout)? else {
                return Ok(Streamed::Idle);
            };
            match message.tag {
                b'd' => return copy_data(message.body),
                b'c' => {
                    frontend::copy_done(&mut self.outgoing);
                    self.send()?;
                    let rows = self.results("START_REPLICATION")?;
                    let (timeline, start) = self.next_timeline(&rows)?;
                    return Ok(Streamed::TimelineEnd { timeline, start });
                }
                b'E' => bail!(
                    "streaming from {} failed: {}",
                    self.server,
                    error_text(&message.body)
                ),
                _ => {} // notices
            }
        }
    }

    /// The next timeline and where it starts, from the result set that follows the end
    /// of a timeline's stream.
    fn next_timeline(&self, rows: &[Vec<Option<String>>]) -> Result<(u32, Lsn)> {
        match rows.first().map(|r| r.as_slice()) {
            Some([Some(timeline), Some(start)]) => Ok((
                timeline
                    .parse()
                    .context("the server named a bad next timeline")?,
                start
                    .parse()
                    .map_err(|_| anyhow!("the server named a bad next timeline start"))?,
            )),
            _ => bail!(
                "{} ended streaming without naming a next timeline (is it shutting down?)",
                self.server
            ),
        }
    }

    /// `host:port` of the server, for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Tells the server how far WAL is written and flushed.
    pub fn send_status(&mut self, written: Lsn, flushed: Lsn, reply: bool) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64)
            - PG_EPOCH_OFFSET_US;
        let mut update = Vec::with_capacity(34);
        update.push(b'r');
        update.extend_from_slice(&written.0.to_be_bytes());
        update.extend_from_slice(&flushed.0.to_be_bytes());
        update.extend_from_slice(&0u64.to_be_bytes()); // applied: nothing is replayed here
        update.extend_from_slice(&now.to_be_bytes());
        update.push(u8::from(reply));
        frontend::CopyData::new(&update[..])?.write(&mut self.outgoing);
        self.send()
    }

    fn send(&mut self) -> Result<()> {
        self.wire
            .write_all(&self.outgoing)
            .with_context(|| format!("the connection to {} broke while sending", self.server))?;
        self.outgoing.clear();
        Ok(())
    }

    /// The next message, however long it takes.
    fn receive(&mut self) -> Result<Message> {
        self.wire.set_timeout(None)?;
        loop {
            if let Some(message) = self.take_message()? {
                return Ok(message);
            }
            self.fill()?;
        }
    }

    /// The next message, or `None` when none is whole within `timeout` (or a signal
    /// interrupted the wait).
    fn receive_within(&mut self, timeout: Duration) -> Result<Option<Message>> {
        if let Some(message) = self.take_message()? {
            return Ok(Some(message));
        }
        self.wire
            .set_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match self.fill() {
            Ok(()) => self.take_message(),
            Err(e) if is_timeout(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether a whole message is waiting in the buffer.
    pub fn has_pending(&self) -> bool {
        self.pending_length()
            .is_some_and(|len| self.incoming.len() > len)
    }

    /// The length field of the message at the front of the buffer, once it is there.
    fn pending_length(&self) -> Option<usize> {
        let field = self.incoming.get(1..5)?;
        Some(u32::from_be_bytes(field.try_into().expect("4 bytes")) as usize)
    }

    fn take_message(&mut self) -> Result<Option<Message>> {
        let Some(len) = self.pending_length() else {
            return Ok(None);
        };
        if !(4..=MAX_MESSAGE).contains(&len) {
            bail!("{} sent a malformed message (length {len})", self.server);
        }
        if self.incoming.len() <= len {
            return Ok(None);
        }
        let mut whole = self.incoming.split_to(1 + len).freeze();
        let tag = whole[0];
        whole.advance(5);
        Ok(Some(Message { tag, body: whole }))
    }

    /// Reads what the socket has into the buffer.
    fn fill(&mut self) -> Result<()> {
        let mut chunk = [0u8; 128 * 1024];
        match self.wire.read(&mut chunk) {
            Ok(0) => bail!("{} closed the connection", self.server),
            Ok(n) => {
                self.incoming.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                Err(anyhow::Error::new(e))
            }
            Err(e) => bail!("the connection to {} broke: {e}", self.server),
        }
    }
}

/// Whether `e` is a read that timed out (a socket read timeout is `WouldBlock`; a
/// `TimedOut` is TCP giving up on the connection) or was interrupted by a signal.
fn is_timeout(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted))
}

/// The connection to `host`: a Unix socket, or TCP with TLS as `tls` says.
fn open_wire(host: &str, port: u16, timeout: Option<Duration>, tls: &Tls) -> Result<Box<dyn Wire>> {
    if host.starts_with('/') {
        return Ok(Box::new(UnixStream::connect(format!(
            "{host}/.s.PGSQL.{port}"
        ))?));
    }
    let mut tcp = connect_tcp(host, port, timeout)?;
    if tls.need == Need::Never {
        return Ok(Box::new(tcp));
    }
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request)?;
    let mut answer = [0u8];
    tcp.read_exact(&mut answer)?;
    match answer[0] {
        b'S' => {
            let mut session = tls.client(host)?;
            while session.is_handshaking() {
                session
                    .complete_io(&mut tcp)
                    .map_err(|e| match tls::rustls_error(&e) {
                        Some(failure) => anyhow!("{}", tls.explain(host, failure)),
                        None => anyhow!("the TLS handshake failed: {e}"),
                    })?;
            }
            Ok(Box::new(rustls::StreamOwned::new(session, tcp)))
        }
        b'N' if tls.need == Need::IfOffered => Ok(Box::new(tcp)),
        b'N' => bail!(tls::NO_TLS),
        _ => bail!("the server answered the TLS request with neither yes nor no"),
    }
}

fn connect_tcp(host: &str, port: u16, timeout: Option<Duration>) -> std::io::Result<TcpStream> {
    let mut failure = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT)) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => failure = Some(e),
        }
    }
    Err(failure.unwrap_or_else(|| std::io::Error::new(ErrorKind::NotFound, "no address")))
}

/// A CopyData message of the stream: XLogData or a keepalive.
fn copy_data(mut body: Bytes) -> Result<Streamed> {
    match body.first() {
        Some(b'w') if body.len() >= 25 => {
            body.advance(1);
            let start = Lsn(body.get_u64());
            let server_end = Lsn(body.get_u64());
            body.advance(8); // the server's clock
            Ok(Streamed::Wal {
                start,
                server_end,
                data: body,
            })
        }
        Some(b'k') if body.len() >= 18 => Ok(Streamed::Keepalive {
            server_end: Lsn(u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"))),
            reply: body[17] != 0,
        }),
        _ => bail!("the server sent a streaming message pgkeep does not know"),
    }
}

/// A DataRow's columns as text (`None` for NULL).
fn data_row(mut body: Bytes) -> Result<Vec<Option<String>>> {
    let malformed = || anyhow!("the server sent a malformed row");
    if body.len() < 2 {
        return Err(malformed());
    }
    let columns = body.get_i16();
    let mut row = Vec::with_capacity(columns.max(0) as usize);
    for _ in 0..columns {
        if body.len() < 4 {
            return Err(malformed());
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return Err(malformed());
        }
        row.push(Some(
            String::from_utf8_lossy(&body.split_to(len)).into_owned(),
        ));
    }
    Ok(row)
}

/// An ErrorResponse as one line: severity, message, detail and hint.
fn error_text(body: &[u8]) -> String {
    let mut message = String::new();
    let mut extra = Vec::new();
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let text = String::from_utf8_lossy(&field[1..]);
        match field[0] {
            b'M' => message = text.into_owned(),
            b'D' => extra.push(format!("detail: {text}")),
            b'H' => extra.push(format!("hint: {text}")),
            _ => {}
        }
    }
    if extra.is_empty() {
        message
    } else {
        format!("{message} ({})", extra.join("; "))
    }
}

fn single_value(rows: &[Vec<Option<String>>]) -> Option<String> {
    rows.first()?.first()?.clone()
}

/// A slot name quoted as an identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows_errors_and_stream_messages() {
        let mut row = vec![0, 2, 0, 0, 0, 2];
        row.extend_from_slice(b"15");
        row.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(
            data_row(Bytes::from(row)).unwrap(),
            vec![Some("15".to_string()), None]
        );
        assert!(data_row(Bytes::from_static(&[0, 1, 0, 0, 0, 9, b'x'])).is_err());

        let error = b"SFATAL\0C28000\0Mno pg_hba.conf entry\0Hadd one\0\0";
        assert_eq!(error_text(error), "no pg_hba.conf entry (hint: add one)");

        let mut wal = vec![b'w'];
        wal.extend_from_slice(&0x0100_0028u64.to_be_bytes());
        wal.extend_from_slice(&0x0300_0000u64.to_be_bytes());
        wal.extend_from_slice(&7i64.to_be_bytes());
        wal.extend_from_slice(b"abc");
        match copy_data(Bytes::from(wal)).unwrap() {
            Streamed::Wal {
                start,
                server_end,
                data,
            } => {
                assert_eq!(start, Lsn(0x0100_0028));
                assert_eq!(server_end, Lsn(0x0300_0000));
                assert_eq!(&data[..], b"abc");
            }
            _ => panic!("not WAL"),
        }
        let mut keepalive = vec![b'k'];
        keepalive.extend_from_slice(&0x0400_0010u64.to_be_bytes());
        keepalive.extend_from_slice(&9i64.to_be_bytes());
        keepalive.push(1);
        assert!(matches!(
            copy_data(Bytes::from(keepalive)).unwrap(),
            Streamed::Keepalive {
                server_end: Lsn(0x0400_0010),
                reply: true
            }
        ));
        assert!(copy_data(Bytes::from_static(b"w")).is_err());
    }
}
