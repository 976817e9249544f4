//! Session lookups batched across concurrent requests.
//!
//! Every authenticated request reads its session and user. Under load, many such reads are
//! waiting at the same moment; answering them with one `WHERE sessions.id IN (...)` query
//! costs the database one round trip instead of one per request. A lookup is never attached
//! to a query that has already started, so each one still sees every change committed before
//! the request arrived: batching saves work without serving stale answers. When nothing else
//! is waiting, a lookup runs on its own at once, so an idle service adds no latency.
//!
//! The queue is bounded: when the database falls so far behind that `QUEUE_CAPACITY` lookups
//! are waiting, the next one fails at once as `Overloaded` instead of piling up memory. A
//! lookup whose request has given up (its timeout elapsed, its client left) is dropped from
//! the batch before the query runs, so abandoned work costs the database nothing.

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::bounded::Bounded;
use super::entities::{sessions, users};
use super::rows::{to_session, to_user};
use crate::domain::{BackendError, Session, SessionId, User};

/// The most lookups one query answers.
const MAX_BATCH: usize = 128;

/// The most lookups waiting for a query; one more is refused as overloaded.
const QUEUE_CAPACITY: usize = 4096;

type Answer = Result<Option<(Session, User)>, BackendError>;

struct Lookup {
    id: SessionId,
    reply: oneshot::Sender<Answer>,
}

/// The queue of pending lookups; a background task turns it into queries.
#[derive(Clone)]
pub(super) struct SessionLookups {
    queue: mpsc::Sender<Lookup>,
}

impl SessionLookups {
    /// Starts the batching task on the current Tokio runtime; it ends when the last handle is
    /// dropped. At most `concurrent_queries` batch queries run at once.
    pub(super) fn start(bounded: Bounded, concurrent_queries: usize) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(dispatch(bounded, pending, concurrent_queries.max(1)));
        Self { queue }
    }

    /// Finds one session with its user.
    ///
    /// # Errors
    /// [`BackendError::Overloaded`] when the queue is full; [`BackendError`] when the query
    /// fails. The caller bounds the wait.
    pub(super) async fn find(&self, id: SessionId) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Lookup { id, reply })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => BackendError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => {
                    BackendError::unexpected("the session lookup task has stopped")
                }
            })?;
        answer
            .await
            .map_err(|_| BackendError::unexpected("a session lookup was dropped"))?
    }
}

/// Collects whatever lookups are waiting into one batch whenever a query slot is free.
async fn dispatch(bounded: Bounded, mut pending: mpsc::Receiver<Lookup>, slots: usize) {
    let slots = Arc::new(Semaphore::new(slots));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        while batch.is_empty() {
            let Some(first) = pending.recv().await else {
                return;
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match pending.try_recv() {
                    Ok(lookup) => batch.push(lookup),
                    Err(_) => break,
                }
            }
            // Whoever stopped waiting needs no answer.
            batch.retain(|lookup| !lookup.reply.is_closed());
        }
        let bounded = bounded.clone();
        tokio::spawn(async move {
            answer(&bounded, batch).await;
            drop(slot);
        });
    }
}

/// Runs one query for `batch` and hands every lookup its answer.
async fn answer(bounded: &Bounded, batch: Vec<Lookup>) {
    let ids: Vec<uuid::Uuid> = batch.iter().map(|lookup| lookup.id.0).collect();
    let db: &DatabaseConnection = bounded.db();
    let rows = bounded
        .run(
            sessions::Entity::find()
                .filter(sessions::Column::Id.is_in(ids))
                .find_also_related(users::Entity)
                .all(db),
        )
        .await;
    match rows {
        Ok(rows) => {
            let found: HashMap<uuid::Uuid, (sessions::Model, users::Model)> = rows
                .into_iter()
                .filter_map(|(session, user)| Some((session.id, (session, user?))))
                .collect();
            // Several requests may carry the same session: each gets its own copy.
            for lookup in batch {
                let answer = match found.get(&lookup.id.0).cloned() {
                    Some((session, user)) => {
                        to_user(user).map(|user| Some((to_session(session), user)))
                    }
                    None => Ok(None),
                };
                let _ = lookup.reply.send(answer);
            }
        }
        Err(err) => {
            // One failure, told to every waiting request in its own copy.
            let message = format!(
                "{err}: {}",
                std::error::Error::source(&err).map_or_else(String::new, ToString::to_string)
            );
            for lookup in batch {
                let copy = match err {
                    BackendError::Unavailable(_) => {
                        BackendError::Unavailable(message.clone().into())
                    }
                    BackendError::Storage(_) => BackendError::Storage(message.clone().into()),
                    _ => BackendError::Unexpected(message.clone().into()),
                };
                let _ = lookup.reply.send(Err(copy));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sea_orm::Database;

    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_drains_once_its_callers_give_up() {
        // A queue of two with nobody taking from it yet: a stalled database.
        let (queue, pending) = mpsc::channel(2);
        let lookups = SessionLookups { queue };
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let lookups = lookups.clone();
                tokio::spawn(async move { lookups.find(SessionId::random()).await })
            })
            .collect();
        while lookups.queue.capacity() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            lookups.find(SessionId::random()).await,
            Err(BackendError::Overloaded)
        ));
        // Those callers give up; the database comes back and answers the next one.
        for lookup in waiting {
            lookup.abort();
            let _ = lookup.await;
        }
        let db = Database::connect("sqlite::memory:").await.unwrap();
        crate::outbound::sea_orm::migrate_up(&db).await.unwrap();
        tokio::spawn(dispatch(
            Bounded::new(db, Duration::from_secs(5)),
            pending,
            1,
        ));
        while lookups.queue.capacity() < 2 {
            tokio::task::yield_now().await;
        }
        assert!(lookups.find(SessionId::random()).await.unwrap().is_none());
    }
}
