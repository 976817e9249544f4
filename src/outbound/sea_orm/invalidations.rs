//! What the database's triggers announce, handed to whom it concerns: to the session cache
//! ([`SessionCache::received`]) the users and sessions that changed (migration 13), and to the
//! key refresh the fact that the signing-key table changed (migration 14, PostgreSQL only).
//!
//! - **PostgreSQL**: a connection of its own `LISTEN`s on `portcullis_session_cache` and
//!   `portcullis_signing_keys`. Key changes are few (a rotation, an operator's `keys retire`
//!   or `rotate --now`): each wakes the key refresh, so every instance acts on a retirement
//!   within milliseconds. After the connection was lost, a refresh runs too, since an
//!   announcement may have been missed meanwhile. For the session cache: a
//!   notification is delivered only when its transaction commits, so an instance hears of a
//!   change once the change is visible, and never before. Every second the feed sends itself a
//!   numbered `NOTIFY` through the pool; the listening connection is trusted only while the
//!   newest ping that came back was sent within [`LOST_AFTER`], so a connection that died
//!   without a word (a cut cable, a frozen proxy), or one that lags behind a slow database, is
//!   noticed too. Lost, the cache is distrusted at once (every check goes to the database);
//!   found again, it is emptied before it is trusted.
//! - **SQLite**: the triggers append to `session_cache_invalidations`; the server reads what
//!   is new every `POLL_EVERY`. Writers on the same file in other processes (the CLI) reach a
//!   running server this way. A failed read distrusts the cache until a read succeeds, and a
//!   gap in the sequence (rows purged before they were read) empties it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use chrono::{DateTime, Utc};
use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use uuid::Uuid;

use crate::domain::{SessionId, UserId};
use crate::outbound::session_cache::{Invalidation, SessionCache};

/// The channel the PostgreSQL triggers notify of users and sessions.
const CHANNEL: &str = "portcullis_session_cache";

/// The channel the PostgreSQL trigger on `signing_keys` notifies.
const KEYS_CHANNEL: &str = "portcullis_signing_keys";

/// How often the PostgreSQL feed pings itself.
const PING_EVERY: Duration = Duration::from_secs(1);

/// A PostgreSQL feed whose last sign of life is older than this is taken as lost.
pub const LOST_AFTER: Duration = Duration::from_secs(3);

/// The pause before connecting again after a failure.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// How often a SQLite server reads the new invalidations.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// How long SQLite keeps an invalidation for readers to see.
const KEEP_FOR_SECONDS: i64 = 3600;

/// Who hears the announcements.
pub struct Listeners {
    /// Fed with the invalidations; `None` when the server keeps no session cache.
    pub cache: Option<Arc<SessionCache>>,
    /// Woken when the signing-key table changed (PostgreSQL only).
    pub keys_changed: Arc<Notify>,
}

/// Hands the announcements of `db` to `listeners` until the task is aborted; returns at once
/// when there is nothing to hear (SQLite without a cache). On PostgreSQL it listens on
/// `listen_url` (the database's own URL, or a direct one when the pool goes through a
/// transaction pooler). `timeout` bounds each connection attempt and query.
pub async fn feed(
    db: DatabaseConnection,
    listen_url: String,
    listeners: Listeners,
    timeout: Duration,
) {
    match (db.get_database_backend(), &listeners.cache) {
        (DbBackend::Postgres, _) => listen(&db, &listen_url, &listeners, timeout).await,
        (_, Some(cache)) => poll(&db, cache, timeout).await,
        (_, None) => {}
    }
}

/// Reads one announcement: `u:<user id>`, `s:<session id>`; anything else (a format of a newer
/// version) is taken as "anything may have changed".
fn parse(payload: &str) -> Invalidation {
    let parsed = match payload.split_once(':') {
        Some(("u", id)) => id.parse().ok().map(|id| Invalidation::User(UserId(id))),
        Some(("s", id)) => Uuid::parse_str(id)
            .ok()
            .map(|id| Invalidation::Session(SessionId(id))),
        _ => None,
    };
    parsed.unwrap_or(Invalidation::Everything)
}

async fn listen(db: &DatabaseConnection, url: &str, listeners: &Listeners, timeout: Duration) {
    let ping = format!("p:{}:", Uuid::new_v4().simple());
    loop {
        match tokio::time::timeout(timeout, subscribe(url)).await {
            Ok(Ok(listener)) => {
                // Anything announced before the LISTEN took effect is forgotten here.
                if let Some(cache) = &listeners.cache {
                    cache.trust();
                }
                listeners.keys_changed.notify_one();
                tracing::info!("listening for the database's announcements");
                metrics::counter!("portcullis_session_cache_feed_connects_total").increment(1);
                listen_until_lost(listener, db, listeners, &ping, timeout).await;
                if let Some(cache) = &listeners.cache {
                    cache.distrust();
                }
                tracing::warn!(
                    "the listening connection is lost; every session check goes to the \
                     database, and key changes wait for the periodic refresh, until it is back"
                );
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "session cache: cannot listen; checks go to the database");
            }
            Err(_) => {
                tracing::warn!("session cache: listening timed out; checks go to the database")
            }
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

async fn subscribe(url: &str) -> Result<PgListener, sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    // A lost connection must end `try_recv` at once, not be replaced behind our back.
    listener.eager_reconnect(false);
    listener.listen_all([CHANNEL, KEYS_CHANNEL]).await?;
    Ok(listener)
}

/// Hands every notification to the cache; returns when the connection is lost or can no longer
/// show that it is current. Every [`PING_EVERY`] the feed notifies itself through the pool, each
/// ping numbered; notifications arrive in commit order, so a ping that comes back proves that
/// everything committed before it was sent has arrived. The feed is lost when the newest ping
/// that came back was sent more than [`LOST_AFTER`] ago, whatever the reason: a dead connection,
/// a frozen proxy, or a database so slow that pings (and with them the announcements) lag or
/// cannot be sent at all. A cache that cannot show it is current must not answer: an ended
/// session would pass for as long as the announcement of its end is late.
async fn listen_until_lost(
    mut listener: PgListener,
    db: &DatabaseConnection,
    listeners: &Listeners,
    ping: &str,
    timeout: Duration,
) {
    let pings = Mutex::new(Pings::new());
    let receive = async {
        // `Ok(None)`: the connection was lost, and with it perhaps some notifications.
        while let Ok(Some(notification)) = listener.try_recv().await {
            if notification.channel() == KEYS_CHANNEL {
                listeners.keys_changed.notify_one();
            } else if let Some(number) = notification.payload().strip_prefix(ping) {
                if lock(&pings).answered(number)
                    && let Some(cache) = &listeners.cache
                {
                    cache.confirm();
                }
            } else if let (Some(cache), false) =
                (&listeners.cache, notification.payload().starts_with("p:"))
            {
                cache.received(parse(notification.payload()));
            }
        }
    };
    let keep_alive = async {
        let mut ticks = tokio::time::interval(PING_EVERY);
        // Dropped with this future: no ping outlives the connection it was meant for.
        let mut sending = tokio::task::JoinSet::new();
        loop {
            ticks.tick().await;
            while sending.try_join_next().is_some() {}
            let number = {
                let mut pings = lock(&pings);
                if pings.current_as_of.elapsed() > LOST_AFTER {
                    return;
                }
                // One ping at a time: behind a slow database, pings must not take the pool's
                // connections from the requests.
                if !sending.is_empty() {
                    continue;
                }
                pings.send()
            };
            let statement = Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_notify($1, $2)",
                [CHANNEL.into(), format!("{ping}{number}").into()],
            );
            // Sent beside the clock, so a ping stuck in a slow pool cannot hold the check up.
            let db = db.clone();
            sending.spawn(async move {
                let _ = tokio::time::timeout(timeout, db.execute_raw(statement)).await;
            });
        }
    };
    tokio::select! {
        () = receive => {}
        () = keep_alive => {}
    }
}

/// The feed's pings: when each one still awaited was sent, and as of when the feed is known
/// to be current.
struct Pings {
    next: u64,
    sent: std::collections::VecDeque<(u64, Instant)>,
    current_as_of: Instant,
}

impl Pings {
    /// Listening has just begun: everything committed before now is behind the cache, which
    /// was emptied.
    fn new() -> Self {
        Self {
            next: 0,
            sent: std::collections::VecDeque::new(),
            current_as_of: Instant::now(),
        }
    }

    /// A new ping's number.
    fn send(&mut self) -> u64 {
        let number = self.next;
        self.next += 1;
        // Pings never answered (not sent, or lost with a connection) are not kept forever.
        if self.sent.len() == 64 {
            self.sent.pop_front();
        }
        self.sent.push_back((number, Instant::now()));
        number
    }

    /// Ping `number` came back: the feed is current as of its sending. Whether it was one of
    /// this connection's.
    fn answered(&mut self, number: &str) -> bool {
        let Ok(number) = number.parse::<u64>() else {
            return false;
        };
        let Some(at) = self.sent.iter().position(|(n, _)| *n == number) else {
            return false;
        };
        self.current_as_of = self.current_as_of.max(self.sent[at].1);
        self.sent.drain(..=at);
        true
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn poll(db: &DatabaseConnection, cache: &SessionCache, timeout: Duration) {
    let mut seen: Option<i64> = None;
    let mut ticks = tokio::time::interval(POLL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match tokio::time::timeout(timeout, read_after(db, seen)).await {
            Ok(Ok(rows)) => {
                let Some(last) = seen else {
                    // The first read only learns where the log ends; the cache starts empty.
                    seen = Some(rows.last().map_or(0, |row| row.0));
                    cache.trust();
                    continue;
                };
                if rows.first().is_some_and(|row| row.0 != last + 1) {
                    cache.received(Invalidation::Everything);
                }
                for (_, what) in &rows {
                    cache.received(*what);
                }
                seen = rows.last().map(|row| row.0).or(seen);
                cache.confirm();
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "session cache: cannot read invalidations; checks go to the database");
                cache.distrust();
                seen = None;
            }
            Err(_) => {
                cache.distrust();
                seen = None;
            }
        }
    }
}

/// The invalidations after `seen`, in order; with `seen` unknown, only the last one (where the
/// log ends).
async fn read_after(
    db: &DatabaseConnection,
    seen: Option<i64>,
) -> Result<Vec<(i64, Invalidation)>, DbErr> {
    let statement = match seen {
        Some(seen) => Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "SELECT seq, user_id, session_id FROM session_cache_invalidations \
             WHERE seq > $1 ORDER BY seq LIMIT 10000",
            [seen.into()],
        ),
        None => Statement::from_string(
            DbBackend::Sqlite,
            "SELECT seq, user_id, session_id FROM session_cache_invalidations \
             ORDER BY seq DESC LIMIT 1",
        ),
    };
    db.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| {
            let seq: i64 = row.try_get("", "seq")?;
            let user: Option<i64> = row.try_get("", "user_id")?;
            let session: Option<Uuid> = row.try_get("", "session_id")?;
            let what = match (user, session) {
                (Some(user), _) => Invalidation::User(UserId(user)),
                (None, Some(session)) => Invalidation::Session(SessionId(session)),
                (None, None) => Invalidation::Everything,
            };
            Ok((seq, what))
        })
        .collect()
}

/// Deletes SQLite's invalidations older than an hour: every server has read them long since.
pub(super) async fn purge(conn: &impl ConnectionTrait, now: DateTime<Utc>) -> Result<(), DbErr> {
    if conn.get_database_backend() != DbBackend::Sqlite {
        return Ok(());
    }
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        "DELETE FROM session_cache_invalidations WHERE at < $1",
        [(now.timestamp() - KEEP_FOR_SECONDS).into()],
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_are_read_and_anything_unknown_invalidates_everything() {
        assert_eq!(parse("u:42"), Invalidation::User(UserId(42)));
        let id = Uuid::new_v4();
        assert_eq!(
            parse(&format!("s:{id}")),
            Invalidation::Session(SessionId(id))
        );
        for odd in ["", "u:", "u:x", "s:not-a-uuid", "x:1", "u42"] {
            assert_eq!(parse(odd), Invalidation::Everything, "{odd:?}");
        }
    }

    #[test]
    fn the_feed_is_current_as_of_the_newest_ping_that_came_back() {
        let mut pings = Pings::new();
        let listening = pings.current_as_of;
        std::thread::sleep(Duration::from_millis(2));
        let first = pings.send();
        std::thread::sleep(Duration::from_millis(2));
        let second = pings.send();
        let second_sent = pings.sent[1].1;
        // An answer proves only what was committed before its ping was sent.
        assert!(pings.answered(&second.to_string()));
        assert_eq!(pings.current_as_of, second_sent);
        assert!(pings.current_as_of > listening);
        // An older ping that arrives after it (or one of another connection, or garbage)
        // moves nothing back or forward.
        assert!(!pings.answered(&first.to_string()));
        assert!(!pings.answered("999"));
        assert!(!pings.answered("x"));
        assert_eq!(pings.current_as_of, second_sent);
    }

    #[test]
    fn pings_never_answered_are_not_kept_forever() {
        let mut pings = Pings::new();
        for _ in 0..1000 {
            pings.send();
        }
        assert_eq!(pings.sent.len(), 64);
        assert!(pings.answered("999"));
        assert!(pings.sent.is_empty());
    }
}
