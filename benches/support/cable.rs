//! A TCP forwarder in front of PostgreSQL that can be cut and restored (an outage), frozen (a
//! proxy that passes nothing and closes nothing), or slowed down (a distant or congested
//! network). Shared by the black-box tests (`tests/api/main.rs` includes this file) and the
//! fault drill (`benches/faults.rs`); it knows nothing of Portcullis.

// Each includer uses its own part: the tests freeze it, the drill slows it down.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A TCP forwarder to PostgreSQL that the caller can cut, restore, freeze and slow down.
pub struct Cable {
    port: u16,
    upstream: String,
    tasks: Vec<JoinHandle<()>>,
    knobs: Arc<Knobs>,
}

/// What every forwarded connection reads before passing bytes on.
#[derive(Default)]
struct Knobs {
    /// While set, nothing passes either way, but every connection stays open.
    frozen: AtomicBool,
    /// Added to every round trip: the bytes coming back from upstream are delivered this many
    /// microseconds after they arrived.
    latency_micros: AtomicU64,
}

impl Cable {
    /// A cable to the PostgreSQL server of `url`, and `url` through it.
    pub async fn in_front_of(url: &str) -> (Self, String) {
        // postgres://[user@]host:port/db: the cable takes the place of host:port.
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_once('/').expect("a URL with a database");
        let (userinfo, upstream) = match authority.rsplit_once('@') {
            Some((userinfo, host)) => (format!("{userinfo}@"), host.to_owned()),
            None => (String::new(), authority.to_owned()),
        };
        let upstream = if upstream.contains(':') {
            upstream
        } else {
            format!("{upstream}:5432")
        };
        let cable = Self::connect(&upstream).await;
        let via_cable = format!("{scheme}://{userinfo}127.0.0.1:{}/{path}", cable.port);
        (cable, via_cable)
    }

    /// A cable to `upstream` (`host:port`), listening on a free port of 127.0.0.1.
    pub async fn connect(upstream: &str) -> Self {
        let mut cable = Self {
            port: 0,
            upstream: upstream.to_owned(),
            tasks: Vec::new(),
            knobs: Arc::default(),
        };
        cable.restore().await;
        cable
    }

    /// Listens again (on the same port) after [`Cable::cut`].
    pub async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.port = listener.local_addr().unwrap().port();
        let upstream = self.upstream.clone();
        let knobs = Arc::clone(&self.knobs);
        self.tasks.push(tokio::spawn(async move {
            // Dropped with this task when the cable is cut: that aborts every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let knobs = Arc::clone(&knobs);
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let (client_in, client_out) = client.into_split();
                        let (server_in, server_out) = server.into_split();
                        tokio::join!(
                            pump(client_in, server_out, &knobs, false),
                            pump(server_in, client_out, &knobs, true)
                        );
                    }
                });
            }
        }));
    }

    /// Holds every byte on the way, keeping the connections open, until [`Cable::thaw`].
    pub fn freeze(&self) {
        self.knobs.frozen.store(true, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.knobs.frozen.store(false, Ordering::SeqCst);
    }

    /// Adds `latency` to every round trip through the cable, connections already open
    /// included; `Duration::ZERO` takes it away. Bytes keep their order and the cable's
    /// throughput is not capped: a delay line, not a queue served one at a time.
    pub fn set_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.knobs.latency_micros.store(micros, Ordering::SeqCst);
    }

    /// Closes the listener and every forwarded connection.
    pub fn cut(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

/// Copies `from` to `to` until either ends, holding what it read while frozen, and delivering
/// it the cable's latency after it arrived when `delayed`.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, knobs: &Knobs, delayed: bool) {
    // A few chunks in flight at most: a receiver that stops reading stops the sender, as on a
    // wire.
    let (line, mut arrivals) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(64);
    let read = async move {
        let mut buffer = vec![0; 16 * 1024];
        while let Ok(read @ 1..) = from.read(&mut buffer).await {
            while knobs.frozen.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let latency = if delayed {
                Duration::from_micros(knobs.latency_micros.load(Ordering::SeqCst))
            } else {
                Duration::ZERO
            };
            if line
                .send((Instant::now() + latency, buffer[..read].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = arrivals.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
