//! bcrypt password hashing on a bounded pool, off the async workers.
//!
//! bcrypt at cost 12 takes about a quarter of a second of one core. Running it on the async
//! workers would stall every other request; running it without a bound would let a login flood
//! queue work (and memory) without end. So at most `workers` hashes run at once, at most
//! `queue` more wait, and anything beyond is refused at once with `Overloaded`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use crate::domain::ports::PasswordHasher;
use crate::domain::{BackendError, Password, PasswordHash, password};

/// The pool's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashPoolLimits {
    /// Hashes computed at once; the number of cores is the sensible value.
    pub workers: usize,
    /// Requests allowed to wait for a worker before new ones are refused.
    pub queue: usize,
}

/// [`PasswordHasher`] on bcrypt.
pub struct BcryptPasswordHasher {
    cost: u32,
    limits: HashPoolLimits,
    running: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
}

impl BcryptPasswordHasher {
    /// # Panics
    /// When `cost` is outside bcrypt's range 4..=31 or `workers` is zero: start-up checks both.
    pub fn new(cost: u32, limits: HashPoolLimits) -> Self {
        assert!(
            (4..=31).contains(&cost),
            "bcrypt cost must be within 4..=31"
        );
        assert!(
            limits.workers > 0,
            "the hash pool needs at least one worker"
        );
        Self {
            cost,
            limits,
            running: Arc::new(Semaphore::new(limits.workers)),
            admitted: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Hashes now waiting for a worker or running.
    pub fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Runs `work` on the blocking pool once a worker is free, or refuses at once when the
    /// queue is full.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BackendError> {
        let capacity = self.limits.workers + self.limits.queue;
        let admitted = self.admitted.fetch_add(1, Ordering::AcqRel);
        let _slot = Admission(&self.admitted);
        Admission::gauge(admitted + 1);
        if admitted >= capacity {
            metrics::counter!("portcullis_password_hash_rejected_total").increment(1);
            return Err(BackendError::Overloaded);
        }
        let queued = Instant::now();
        let permit = Arc::clone(&self.running)
            .acquire_owned()
            .await
            .map_err(BackendError::unexpected)?;
        metrics::histogram!("portcullis_password_hash_wait_seconds")
            .record(queued.elapsed().as_secs_f64());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(BackendError::unexpected)
    }
}

/// Holds an admission slot, and keeps the queue gauge true, however the request ends
/// (cancelled futures included).
struct Admission<'a>(&'a AtomicUsize);

impl<'a> Admission<'a> {
    fn gauge(admitted: usize) {
        // The gauge counts requests waiting or hashing: the pool's whole backlog.
        metrics::gauge!("portcullis_password_hash_queue_depth").set(admitted as f64);
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        Self::gauge(before.saturating_sub(1));
    }
}

/// Whether bcrypt takes `candidate` whole. bcrypt reads at most 72 bytes and stops at a NUL, so
/// anything longer, or holding a NUL, would be compared truncated.
fn fits_bcrypt(candidate: &str) -> bool {
    candidate.len() <= password::MAX_BYTES && !candidate.contains('\0')
}

#[async_trait]
impl PasswordHasher for BcryptPasswordHasher {
    async fn hash(&self, password: &Password) -> Result<PasswordHash, BackendError> {
        // The policy already guarantees a whole fit; checked again so this adapter can never
        // store a truncated hash, whatever its caller does.
        if !fits_bcrypt(password.expose()) {
            return Err(BackendError::unexpected("password does not fit bcrypt"));
        }
        let secret = password.expose().to_owned();
        let cost = self.cost;
        // `hash` (not `non_truncating_hash`) because the latter refuses exactly 72 bytes, which
        // bcrypt does take whole: only the terminating NUL is dropped, and with NULs refused
        // above no two passwords can collide.
        let encoded = self
            .run(move || bcrypt::hash(secret, cost))
            .await?
            .map_err(BackendError::unexpected)?;
        Ok(PasswordHash::new(encoded))
    }

    async fn verify(&self, candidate: &str, hash: &PasswordHash) -> Result<bool, BackendError> {
        if !fits_bcrypt(candidate) {
            return Ok(false);
        }
        let candidate = candidate.to_owned();
        let encoded = hash.as_str().to_owned();
        self.run(move || bcrypt::verify(candidate, &encoded))
            .await?
            .map_err(BackendError::unexpected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher(workers: usize, queue: usize) -> BcryptPasswordHasher {
        BcryptPasswordHasher::new(4, HashPoolLimits { workers, queue })
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_nothing_else() {
        let h = hasher(1, 0);
        let password = Password::parse("correct horse").unwrap();
        let hash = h.hash(&password).await.unwrap();
        assert!(hash.as_str().starts_with("$2b$04$"));
        assert!(h.verify("correct horse", &hash).await.unwrap());
        assert!(!h.verify("correct horsE", &hash).await.unwrap());
    }

    #[tokio::test]
    async fn a_72_byte_password_is_hashed_whole_and_longer_candidates_never_match() {
        let h = hasher(1, 0);
        let full = "x".repeat(72);
        let hash = h.hash(&Password::parse(&full).unwrap()).await.unwrap();
        assert!(h.verify(&full, &hash).await.unwrap());
        assert!(!h.verify(&"x".repeat(71), &hash).await.unwrap());
        // Truncating verification would accept this one.
        assert!(!h.verify(&format!("{full}suffix"), &hash).await.unwrap());
        assert!(
            !h.verify(&format!("{}\0", "x".repeat(71)), &hash)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_malformed_stored_hash_is_an_unexpected_error() {
        let h = hasher(1, 0);
        let err = h
            .verify("password", &PasswordHash::new("not-bcrypt".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::Unexpected(_)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_beyond_workers_plus_queue_are_refused_at_once() {
        let h = Arc::new(BcryptPasswordHasher::new(
            12,
            HashPoolLimits {
                workers: 1,
                queue: 1,
            },
        ));
        let password = "correct horse";
        let stored = PasswordHash::new(bcrypt::hash(password, 4).unwrap());
        let busy: Vec<_> = (0..2)
            .map(|_| {
                let h = Arc::clone(&h);
                let stored = stored.clone();
                tokio::spawn(async move {
                    h.run(move || std::thread::sleep(std::time::Duration::from_millis(300)))
                        .await
                        .map(|()| stored)
                })
            })
            .collect();
        while h.in_flight() < 2 {
            tokio::task::yield_now().await;
        }
        let refused = h.verify(password, &stored).await.unwrap_err();
        assert!(matches!(refused, BackendError::Overloaded));
        for task in busy {
            task.await.unwrap().unwrap();
        }
        assert_eq!(h.in_flight(), 0);
        assert!(h.verify(password, &stored).await.unwrap());
    }
}
