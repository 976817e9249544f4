//! A per-instance cache of session checks, in front of [`SessionRepository::find_session`].
//!
//! Every authenticated request checks its session and user; with this cache a repeated check
//! costs a hash-map lookup instead of a database round trip. It stays exact because every write
//! that ends a session or changes a user invalidates the entries it affects:
//!
//! - on this instance, by [`CachedSessions`] (the repository decorator), after the write
//!   returns and so before the request that made it answers;
//! - on every instance, by the invalidation feed of the storage adapter
//!   (`sea_orm::invalidations`): the database's own triggers announce each change in the
//!   change's transaction, and the feed hands it to [`SessionCache::invalidate`].
//!
//! Three rules close the races a cache invites:
//!
//! 1. **A lookup may not store what it read before an invalidation.** Each miss takes a
//!    [`Ticket`] (the invalidation count) before it reads the database, and its answer is
//!    stored only if no invalidation that concerns it (its user, its session, or everything)
//!    came in meanwhile. A write that commits while the read is in flight either is seen by
//!    the read or invalidates after it, and then the ticket is void for that session. The last
//!    `RECENT` invalidations are kept to tell; a ticket older than those is void.
//! 2. **Without a feed there is no cache.** While the feed is not connected (never yet, or
//!    lost), the cache is [`distrust`](SessionCache::distrust)ed: emptied, and bypassed by every
//!    lookup. When the feed is back it is emptied again before it is trusted: anything
//!    announced while nobody listened is gone with it.
//! 3. **Nothing is kept longer than it is true, or than `max_age`.** An entry ends with its
//!    session's absolute and idle ends, and after `max_age` whatever happens: a bound on the
//!    harm of a change made behind the triggers' back.
//!
//! Memory is bounded by `max_entries` and `max_bytes` (an estimate of each entry's heap and
//! table share); when either is reached, the oldest entries make room. A refused check (an
//! ended session, an inactive user) is not kept: it is rare, and the database answers it.
//!
//! [`SessionRepository::find_session`]: crate::domain::ports::SessionRepository::find_session

mod cached_grants;
mod cached_repository;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;

pub use cached_grants::CachedGrants;
pub use cached_repository::CachedSessions;

use crate::domain::{Session, SessionId, User, UserId};

/// What a write made stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// Every session of this user: the user changed, or is gone.
    User(UserId),
    /// This session ended.
    Session(SessionId),
    /// Anything: announcements may have been missed.
    Everything,
}

/// How much the cache may hold, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    pub max_entries: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
}

/// The invalidation count when a lookup missed: its answer may be stored only if the count
/// has not moved since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// The outcome of a lookup in the cache.
#[derive(Debug)]
pub enum Lookup {
    /// The stored check, shared: clone it to own it.
    Hit(Arc<(Session, User)>),
    /// Ask the database, then [`SessionCache::fill`] with the ticket.
    Miss(Ticket),
    /// The cache cannot be trusted now: ask the database, and store nothing.
    Bypass,
}

/// The counters `/metrics` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Lookups that went to the database because the cache was not trusted.
    pub bypassed: u64,
    /// Invalidations that came from the feed (this instance's own writes included).
    pub invalidations_received: u64,
    pub entries: usize,
    pub bytes: usize,
    /// Since the feed last proved it is connected; `None` before it ever did.
    pub since_confirmed: Option<Duration>,
    pub trusted: bool,
}

/// The cache; see the module documentation.
pub struct SessionCache {
    limits: CacheLimits,
    state: Mutex<State>,
    trusted: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    received: AtomicU64,
    confirmed: Mutex<Option<Instant>>,
}

struct Entry {
    found: Arc<(Session, User)>,
    until: Instant,
    bytes: usize,
    /// Matches this entry's place in the eviction queue.
    serial: u64,
}

/// How many of the latest invalidations are kept to judge tickets by.
const RECENT: usize = 256;

#[derive(Default)]
struct State {
    entries: HashMap<SessionId, Entry>,
    by_user: HashMap<UserId, Vec<SessionId>>,
    /// Insertion order for eviction; a slot whose serial no longer matches its entry is stale.
    queue: VecDeque<(SessionId, u64)>,
    bytes: usize,
    /// Counts every invalidation; a ticket is the count when its lookup missed.
    invalidations: u64,
    /// The latest invalidations with their counts, oldest first.
    recent: VecDeque<(u64, Invalidation)>,
    serial: u64,
}

impl SessionCache {
    /// An empty cache; `trusted` is `false` until its feed is connected (`true` only where the
    /// process itself is the only writer).
    pub fn new(limits: CacheLimits, trusted: bool) -> Self {
        Self {
            limits,
            state: Mutex::new(State::default()),
            trusted: AtomicBool::new(trusted),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bypassed: AtomicU64::new(0),
            received: AtomicU64::new(0),
            confirmed: Mutex::new(None),
        }
    }

    /// Looks a session up.
    pub fn lookup(&self, id: SessionId) -> Lookup {
        if !self.trusted.load(Ordering::Acquire) {
            self.bypassed.fetch_add(1, Ordering::Relaxed);
            return Lookup::Bypass;
        }
        let now = Instant::now();
        let mut state = self.state();
        let found = match state.entries.get(&id) {
            Some(entry) if entry.until > now => Some(Arc::clone(&entry.found)),
            Some(_) => {
                state.remove(id);
                None
            }
            None => None,
        };
        let ticket = Ticket(state.invalidations);
        drop(state);
        if let Some(found) = found {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Lookup::Hit(found);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        Lookup::Miss(ticket)
    }

    /// Stores what the database answered to a missed lookup, unless an invalidation came in
    /// since `ticket` was taken, the cache is not trusted now, or the check would be refused.
    pub fn fill(&self, ticket: Ticket, session: &Session, user: &User) {
        let now = Utc::now();
        if !session.is_live(now) || !user.is_active || session.user_id != user.id {
            return;
        }
        let remaining = (session.expires_at.min(session.idle_expires_at) - now)
            .to_std()
            .unwrap_or_default();
        let until = Instant::now() + remaining.min(self.limits.max_age);
        let bytes = weight(session, user);
        if bytes > self.limits.max_bytes {
            return;
        }
        let mut state = self.state();
        if !self.trusted.load(Ordering::Acquire) || state.voids(ticket, session, user) {
            return;
        }
        state.remove(session.id);
        state.drop_expired(Instant::now());
        while state.entries.len() >= self.limits.max_entries
            || state.bytes + bytes > self.limits.max_bytes
        {
            if !state.evict_oldest() {
                break;
            }
        }
        state.serial += 1;
        let serial = state.serial;
        state.queue.push_back((session.id, serial));
        state.bytes += bytes;
        state.by_user.entry(user.id).or_default().push(session.id);
        state.entries.insert(
            session.id,
            Entry {
                found: Arc::new((session.clone(), user.clone())),
                until,
                bytes,
                serial,
            },
        );
        state.compact_queue();
    }

    /// Drops what `what` made stale, and voids the tickets of lookups in flight.
    pub fn invalidate(&self, what: Invalidation) {
        let mut state = self.state();
        state.record(what);
        match what {
            Invalidation::Session(id) => state.remove(id),
            Invalidation::User(id) => {
                for session in state.by_user.remove(&id).unwrap_or_default() {
                    state.remove(session);
                }
            }
            Invalidation::Everything => state.clear(),
        }
    }

    /// [`SessionCache::invalidate`], for an invalidation that came from the feed.
    pub fn received(&self, what: Invalidation) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.invalidate(what);
    }

    /// The feed is not connected: stop using the cache, and empty it.
    pub fn distrust(&self) {
        self.trusted.store(false, Ordering::Release);
        self.invalidate(Invalidation::Everything);
    }

    /// The feed is connected (again): empty the cache of anything from before, then use it.
    pub fn trust(&self) {
        let mut state = self.state();
        state.record(Invalidation::Everything);
        state.clear();
        self.trusted.store(true, Ordering::Release);
        drop(state);
        self.confirm();
    }

    /// The feed proved it is connected.
    pub fn confirm(&self) {
        *self
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    pub fn stats(&self) -> CacheStats {
        let (entries, bytes) = {
            let state = self.state();
            (state.entries.len(), state.bytes)
        };
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bypassed: self.bypassed.load(Ordering::Relaxed),
            invalidations_received: self.received.load(Ordering::Relaxed),
            entries,
            bytes,
            since_confirmed: self
                .confirmed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .map(|at| at.elapsed()),
            trusted: self.trusted.load(Ordering::Acquire),
        }
    }

    /// Sets the cache's metrics; called when they are scraped.
    pub fn record_metrics(&self) {
        let stats = self.stats();
        for (outcome, count) in [
            ("hit", stats.hits),
            ("miss", stats.misses),
            ("bypassed", stats.bypassed),
        ] {
            metrics::counter!("portcullis_session_cache_lookups_total", "outcome" => outcome)
                .absolute(count);
        }
        metrics::counter!("portcullis_session_cache_invalidations_received_total")
            .absolute(stats.invalidations_received);
        metrics::gauge!("portcullis_session_cache_entries").set(stats.entries as f64);
        metrics::gauge!("portcullis_session_cache_bytes").set(stats.bytes as f64);
        metrics::gauge!("portcullis_session_cache_trusted").set(f64::from(u8::from(stats.trusted)));
        metrics::gauge!("portcullis_session_cache_feed_confirmed_seconds_ago").set(
            stats
                .since_confirmed
                .map_or(f64::INFINITY, |since| since.as_secs_f64()),
        );
    }

    /// The state; a panic elsewhere while it was held leaves it consistent (every change is
    /// whole before the next statement), so a poisoned lock is still usable.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn record(&mut self, what: Invalidation) {
        self.invalidations += 1;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.invalidations, what));
    }

    /// Whether an invalidation since `ticket` concerns this session or user, or may have (it
    /// is no longer among the recent ones).
    fn voids(&self, ticket: Ticket, session: &Session, user: &User) -> bool {
        if self.invalidations == ticket.0 {
            return false;
        }
        if self
            .recent
            .front()
            .is_none_or(|(count, _)| *count > ticket.0 + 1)
        {
            return true;
        }
        self.recent
            .iter()
            .filter(|(count, _)| *count > ticket.0)
            .any(|(_, what)| match what {
                Invalidation::User(id) => *id == user.id,
                Invalidation::Session(id) => *id == session.id,
                Invalidation::Everything => true,
            })
    }

    fn remove(&mut self, id: SessionId) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        self.bytes -= entry.bytes;
        let user = entry.found.1.id;
        if let Some(sessions) = self.by_user.get_mut(&user) {
            sessions.retain(|session| *session != id);
            if sessions.is_empty() {
                self.by_user.remove(&user);
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.by_user.clear();
        self.queue.clear();
        self.bytes = 0;
    }

    /// Evicts the oldest entry still present; `false` when there is none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((id, serial)) = self.queue.pop_front() {
            if self
                .entries
                .get(&id)
                .is_some_and(|entry| entry.serial == serial)
            {
                self.remove(id);
                return true;
            }
        }
        false
    }

    /// Drops the entries at the head of the eviction queue whose time is up. Without this, a
    /// session nobody asks about again (an app closed without a logout, which is how most
    /// sessions end) would stay until the bounds pushed it out, and the cache would grow to
    /// them however few sessions are in use. Every entry ends within `max_age` of its filling,
    /// so what stays was filled within the last `max_age`.
    fn drop_expired(&mut self, now: Instant) {
        while let Some(&(id, serial)) = self.queue.front() {
            let current = self.entries.get(&id).filter(|entry| entry.serial == serial);
            match current {
                Some(entry) if entry.until > now => return,
                Some(_) => self.remove(id),
                None => {}
            }
            self.queue.pop_front();
        }
    }

    /// Drops the stale slots of the eviction queue once they outnumber the live ones, so the
    /// queue stays within twice the entries.
    fn compact_queue(&mut self) {
        if self.queue.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.queue.retain(|(id, serial)| {
                entries.get(id).is_some_and(|entry| entry.serial == *serial)
            });
        }
    }
}

/// An estimate of what one entry costs: its fixed parts, its slots in the three tables (with
/// the hash tables' spare capacity), and the text it holds.
fn weight(session: &Session, user: &User) -> usize {
    const FIXED: usize = size_of::<Entry>()
        + size_of::<SessionId>()
        + 2 * size_of::<usize>() // the Arc's counts
        + size_of::<(Session, User)>()
        + size_of::<(SessionId, u64)>() // the queue slot
        + size_of::<SessionId>() // the slot in by_user
        + 32; // control bytes and the tables' spare room
    let text = |value: Option<&str>| value.map_or(0, str::len);
    FIXED
        + user.email.as_str().len()
        + text(user.full_name.as_ref().map(|name| name.as_str()))
        + user.password_hash.as_str().len()
        + text(session.client.user_agent.as_deref())
        + text(session.client.ip.as_deref())
        + size_of_val(session.methods.as_slice())
}

#[cfg(test)]
mod tests;
