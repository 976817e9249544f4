//! The connection loop: HTTP/1.1 through hyper, with the bounds a public listener needs and
//! poem's own server does not offer.
//!
//! - A request's head must arrive within `header_read_timeout` of the connection opening or of
//!   the previous answer, which also bounds how long a kept-alive connection waits for its next
//!   request; otherwise the connection is closed. A client that trickles its headers holds
//!   nothing for long. (Kept here rather than by hyper's own deadline, which arms a timer for
//!   every request: one timer per connection, moved only when it fires, costs a clock read per
//!   request instead; issue 26.)
//! - At most `max_connections` are open at once. A connection beyond that is closed as soon as
//!   it is accepted, so a crowd of idle sockets cannot use up the process's file descriptors
//!   and starve everyone else.
//! - On shutdown no connection is accepted any more; open ones finish the request in flight and
//!   close, within the grace period, after which the rest are dropped.
//!
//! The deadline on a request's body is per request, in `middleware::guard_body`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::inbound::web::metrics;

/// Whether this instance is on its way out: set at the shutdown signal, so that `/ready`
/// answers 503 while the listener still accepts, and load balancers take the instance out
/// before it stops.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn begin(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_under_way(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The bounds on connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// What open connections are told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serve,
    /// Finish the request in flight, then close.
    Drain,
    /// Close now.
    Close,
}

/// Pause after a failed accept (say, out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `endpoint` on `listener` until `shutdown` completes, then drains the open
/// connections for at most `grace`.
///
/// # Errors
/// When the listener's address cannot be read.
pub async fn serve<E>(
    listener: TcpListener,
    endpoint: E,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()>
where
    E: Endpoint<Output = Response> + 'static,
{
    let local = listener.local_addr()?;
    let endpoint = Arc::new(endpoint);
    // Every open connection holds one slot, so the slots are also the count of connections.
    let max = limits.max_connections.min(Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let (phase, watching) = watch::channel(Phase::Serve);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics::record_connection_refused();
            drop(stream);
            continue;
        };
        metrics::record_open_connections(max - slots.available_permits());
        let connection = Connection {
            local,
            peer,
            endpoint: Arc::clone(&endpoint),
            phase: watching.clone(),
            header_read_timeout: limits.header_read_timeout,
        };
        let slots = Arc::clone(&slots);
        tokio::spawn(async move {
            connection.run(stream, slot).await;
            metrics::record_open_connections(max - slots.available_permits());
        });
    }
    drop(listener);
    phase.send_replace(Phase::Drain);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("the shutdown grace period is over; closing the remaining connections");
        phase.send_replace(Phase::Close);
    }
    Ok(())
}

/// One accepted connection.
struct Connection<E> {
    local: SocketAddr,
    peer: SocketAddr,
    endpoint: Arc<E>,
    phase: watch::Receiver<Phase>,
    header_read_timeout: Duration,
}

impl<E: Endpoint<Output = Response> + 'static> Connection<E> {
    /// Serves requests until the client, the head's deadline or shutdown closes the connection.
    /// `_slot` is given back when it returns.
    async fn run(mut self, stream: TcpStream, _slot: OwnedSemaphorePermit) {
        let (local, peer, endpoint) = (self.local, self.peer, self.endpoint);
        let activity = Arc::new(Activity::new());
        let answering = Arc::clone(&activity);
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let endpoint = Arc::clone(&endpoint);
            let activity = Arc::clone(&answering);
            async move {
                activity.answering();
                let req = poem::Request::from((
                    req,
                    LocalAddr(Addr::SocketAddr(local)),
                    RemoteAddr(Addr::SocketAddr(peer)),
                    Scheme::HTTP,
                ));
                let response: hyper::Response<_> = endpoint.get_response(req).await.into();
                Ok::<_, Infallible>(response.map(|body| Sending { body, activity }))
            }
        });
        let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let wait = self.header_read_timeout;
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                outcome = connection.as_mut() => {
                    if let Err(err) = outcome {
                        tracing::debug!(%peer, error = %err, "connection closed with an error");
                    }
                    return;
                }
                changed = self.phase.changed() => {
                    let phase = *self.phase.borrow_and_update();
                    if changed.is_err() || phase == Phase::Close {
                        return;
                    }
                    if phase == Phase::Drain {
                        connection.as_mut().graceful_shutdown();
                    }
                }
                () = &mut deadline => {
                    let now = Instant::now();
                    match activity.idle_since() {
                        Some(since) if now >= since + wait => {
                            tracing::debug!(%peer, "no request head within header_read_timeout");
                            return;
                        }
                        Some(since) => deadline.as_mut().reset(since + wait),
                        None => deadline.as_mut().reset(now + wait),
                    }
                }
            }
        }
    }
}

/// An answer's body, which tells its connection when it has all been handed over: a slow
/// reader's download is not a slow client's head.
struct Sending<B> {
    body: B,
    activity: Arc<Activity>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Sending<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Sending<B> {
    fn drop(&mut self) {
        self.activity.answered();
    }
}

/// Whether a connection is answering a request, or since when it has been waiting for the
/// next one's head.
struct Activity {
    opened: Instant,
    /// Nanoseconds from `opened` to the end of the last answer; [`Activity::ANSWERING`] while
    /// one is being made.
    idle_since: AtomicU64,
}

impl Activity {
    const ANSWERING: u64 = u64::MAX;

    fn new() -> Self {
        Self {
            opened: Instant::now(),
            idle_since: AtomicU64::new(0),
        }
    }

    /// A request's head has arrived.
    fn answering(&self) {
        self.idle_since.store(Self::ANSWERING, Ordering::Relaxed);
    }

    /// Its answer has been handed over: the next head's wait starts now.
    fn answered(&self) {
        let nanos = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.idle_since.store(nanos, Ordering::Relaxed);
    }

    /// Since when the connection has been waiting for a head; `None` while answering.
    fn idle_since(&self) -> Option<Instant> {
        match self.idle_since.load(Ordering::Relaxed) {
            Self::ANSWERING => None,
            nanos => Some(self.opened + Duration::from_nanos(nanos)),
        }
    }
}
