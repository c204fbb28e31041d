//! A TCP proxy in front of an object-storage server that injects the faults a network
//! and a busy service produce: refused connections, `503 Slow Down` answers and
//! connections cut in the middle of a request or a reply. Tests point pgkeep at it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// What the proxy does to the connections it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Faults {
    /// Forwards everything.
    None,
    /// The service is down: every connection, open or new, is dropped.
    Down,
    /// Each new connection fails with this chance in percent: half answer 503, half are
    /// cut after a random number of bytes.
    Random(u32),
}

struct Shared {
    upstream: u16,
    /// 0: none, 1: down, 100 + p: random with chance p.
    mode: AtomicU32,
    /// Raised when the service goes down, so open connections end too.
    generation: AtomicU64,
    seed: AtomicU64,
    stop: AtomicBool,
    /// Connections that got a fault.
    faults: AtomicU64,
    /// Requests for a pack index (`GET ....idx`) that passed.
    index_gets: AtomicU64,
}

/// The proxy; stops when dropped.
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            mode: AtomicU32::new(0),
            generation: AtomicU64::new(0),
            seed: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            stop: AtomicBool::new(false),
            faults: AtomicU64::new(0),
            index_gets: AtomicU64::new(0),
        });
        let s = shared.clone();
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let s = s.clone();
                        std::thread::spawn(move || serve(&s, client));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy { port, shared }
    }

    pub fn set(&self, faults: Faults) {
        let mode = match faults {
            Faults::None => 0,
            Faults::Down => {
                self.shared.generation.fetch_add(1, Ordering::SeqCst);
                1
            }
            Faults::Random(p) => 100 + p.min(100),
        };
        self.shared.mode.store(mode, Ordering::SeqCst);
    }

    /// How many pack indexes were fetched so far.
    pub fn index_gets(&self) -> u64 {
        self.shared.index_gets.load(Ordering::Relaxed)
    }

    /// How many connections got a fault so far.
    pub fn faults(&self) -> u64 {
        self.shared.faults.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// A pseudo-random number (xorshift), the same sequence in every run.
fn next_random(s: &Shared) -> u64 {
    let mut x = s.seed.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s.seed.store(x, Ordering::Relaxed);
    x
}

fn serve(s: &Shared, mut client: TcpStream) {
    let mode = s.mode.load(Ordering::SeqCst);
    if mode == 1 {
        return; // dropped: the client sees the connection close
    }
    let mut cut_after = None;
    if mode >= 100 && next_random(s) % 100 < u64::from(mode - 100) {
        s.faults.fetch_add(1, Ordering::Relaxed);
        if next_random(s).is_multiple_of(2) {
            let mut buf = [0u8; 4096];
            let _ = client.read(&mut buf);
            let _ = client.write_all(
                b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
        cut_after = Some(next_random(s) % 200_000);
    }
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", s.upstream)) else {
        return;
    };
    let generation = s.generation.load(Ordering::SeqCst);
    let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    std::thread::scope(|scope| {
        scope.spawn(|| pump(s, client, upstream, generation, cut_after, true));
        scope.spawn(|| pump(s, u2, c2, generation, cut_after, false));
    });
}

/// Copies `from` to `to` until either closes, the service goes down, or `cut_after`
/// bytes have passed; then closes both. On the way to the service (`requests`) it
/// counts the pack indexes asked for.
fn pump(
    s: &Shared,
    mut from: TcpStream,
    mut to: TcpStream,
    generation: u64,
    cut_after: Option<u64>,
    requests: bool,
) {
    from.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut passed = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if s.generation.load(Ordering::SeqCst) != generation {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let n = match cut_after {
                    Some(limit) if passed + n as u64 >= limit => (limit - passed) as usize,
                    _ => n,
                };
                if requests {
                    s.index_gets
                        .fetch_add(index_gets(&buf[..n]), Ordering::Relaxed);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                passed += n as u64;
                if cut_after.is_some_and(|limit| passed >= limit) {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// The request lines in `bytes` that GET a pack index (`GET /....idx...`, the dot
/// percent-encoded on GCS).
fn index_gets(bytes: &[u8]) -> u64 {
    bytes
        .split(|&b| b == b'\n')
        .filter(|line| {
            let names_index = |ext: &[u8]| line.windows(ext.len()).any(|w| w == ext);
            line.starts_with(b"GET /") && (names_index(b".idx") || names_index(b"%2Eidx"))
        })
        .count() as u64
}
