//! The connection loop: HTTP/1.1 through hyper, with the bounds a public listener needs and
//! poem's own server does not offer.
//!
//! - A request's head must arrive within `header_read_timeout` (hyper's deadline, which also
//!   bounds how long a kept-alive connection waits for its next request); otherwise the
//!   connection is closed. A client that trickles its headers holds nothing for long.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

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
    /// Serves requests until the client or the deadline closes the connection, or shutdown
    /// does. `_slot` is given back when it returns.
    async fn run(mut self, stream: TcpStream, _slot: OwnedSemaphorePermit) {
        let (local, peer, endpoint) = (self.local, self.peer, self.endpoint);
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let endpoint = Arc::clone(&endpoint);
            async move {
                let req = poem::Request::from((
                    req,
                    LocalAddr(Addr::SocketAddr(local)),
                    RemoteAddr(Addr::SocketAddr(peer)),
                    Scheme::HTTP,
                ));
                Ok::<hyper::Response<_>, Infallible>(endpoint.get_response(req).await.into())
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
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
            }
        }
    }
}
