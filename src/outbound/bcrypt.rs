//! bcrypt password hashing on a bounded pool of its own, off the async workers.
//!
//! bcrypt at cost 12 takes about a quarter of a second of one core. Running it on the async
//! workers would stall every other request; running it without a bound would let a login flood
//! queue work (and memory) without end. So `workers` dedicated threads hash, at most `queue`
//! more requests wait, and anything beyond is refused at once with `Overloaded`.
//!
//! The hashing threads run at the lowest CPU priority: when a login flood saturates them,
//! the scheduler still runs the async workers first, so token-authenticated requests keep their
//! latency, while an otherwise idle machine gives all its cores to hashing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::oneshot;

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

type Job = Box<dyn FnOnce() + Send>;

/// [`PasswordHasher`] on bcrypt.
pub struct BcryptPasswordHasher {
    cost: u32,
    capacity: usize,
    jobs: mpsc::Sender<Job>,
    admitted: Arc<AtomicUsize>,
}

impl BcryptPasswordHasher {
    /// Starts the hashing threads; they end when the hasher is dropped.
    ///
    /// # Panics
    /// When `cost` is outside bcrypt's range 4..=31, `workers` is zero, or a thread cannot be
    /// started: start-up checks the first two, and the third is fatal anyway.
    pub fn new(cost: u32, limits: HashPoolLimits) -> Self {
        assert!(
            (4..=31).contains(&cost),
            "bcrypt cost must be within 4..=31"
        );
        assert!(
            limits.workers > 0,
            "the hash pool needs at least one worker"
        );
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..limits.workers {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("password-hash-{n}"))
                .spawn(move || work(&queue))
                .expect("cannot start a password-hashing thread");
        }
        Self {
            cost,
            capacity: limits.workers + limits.queue,
            jobs,
            admitted: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Hashes now waiting for a worker or running.
    pub fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Runs `work` on a hashing thread, or refuses at once when the queue is full.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BackendError> {
        let admitted = self.admitted.fetch_add(1, Ordering::AcqRel);
        // The slot travels with the job: it is freed when the job is done (or dropped), not
        // when the caller gives up, so abandoned requests still count against the queue.
        let slot = Admission(Arc::clone(&self.admitted));
        if admitted >= self.capacity {
            metrics::counter!("portcullis_password_hash_rejected_total").increment(1);
            return Err(BackendError::Overloaded);
        }
        Admission::gauge(admitted + 1);
        let queued = Instant::now();
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            // A caller that went away (client disconnected) needs no hash.
            if done.is_closed() {
                return;
            }
            metrics::histogram!("portcullis_password_hash_wait_seconds")
                .record(queued.elapsed().as_secs_f64());
            let output = work();
            // Free the slot before answering, so the caller's next request finds it free.
            drop(slot);
            let _ = done.send(output);
        });
        self.jobs
            .send(job)
            .map_err(|_| BackendError::unexpected("the hashing threads are gone"))?;
        result
            .await
            .map_err(|_| BackendError::unexpected("a hashing thread dropped its job"))
    }
}

/// A hashing thread: lowest priority, then jobs until the hasher is dropped.
fn work(queue: &Mutex<mpsc::Receiver<Job>>) {
    lower_priority();
    loop {
        // The lock is held only to take one job; a poisoned lock means another worker
        // panicked while taking one, and the queue itself is still sound.
        let next = match queue.lock() {
            Ok(receiver) => receiver.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        match next {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// Gives the calling thread the lowest CPU priority (nice 19).
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: plain system calls on the calling thread's own id. On Linux the nice value is
    // per thread, so this leaves the async workers alone.
    let result = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
    };
    if result != 0 {
        tracing::warn!("could not lower the priority of a password-hashing thread");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Holds an admission slot, and keeps the queue gauge true, however the job ends.
struct Admission(Arc<AtomicUsize>);

impl Admission {
    fn gauge(admitted: usize) {
        // The gauge counts requests waiting or hashing: the pool's whole backlog.
        metrics::gauge!("portcullis_password_hash_queue_depth").set(admitted as f64);
    }
}

impl Drop for Admission {
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

    fn needs_rehash(&self, hash: &PasswordHash) -> bool {
        // `$2b$12$<salt and hash>`, and the `2a`, `2x` and `2y` variants: the cost is the third
        // field.
        let mut fields = hash.as_str().split('$');
        match (fields.next(), fields.next(), fields.next()) {
            (Some(""), Some("2a" | "2b" | "2x" | "2y"), Some(cost)) => {
                cost.parse::<u32>().is_ok_and(|cost| cost != self.cost)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher(workers: usize, queue: usize) -> BcryptPasswordHasher {
        BcryptPasswordHasher::new(4, HashPoolLimits { workers, queue })
    }

    #[test]
    fn hashes_of_another_cost_need_a_rehash_and_foreign_ones_do_not() {
        let h = hasher(1, 1);
        let salt_and_hash = "LhayLxezLhK1LhWvKxCyLOj0j1u.Kj0jZ0pEmm134uzrQlFvQJLF6";
        for (hash, rehash) in [
            (format!("$2b$04${salt_and_hash}"), false),
            (format!("$2b$12${salt_and_hash}"), true),
            (format!("$2a$12${salt_and_hash}"), true),
            (format!("$2y$05${salt_and_hash}"), true),
            (format!("$2y$04${salt_and_hash}"), false),
            (
                "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub".to_owned(),
                false,
            ),
            ("garbage".to_owned(), false),
        ] {
            assert_eq!(
                h.needs_rehash(&PasswordHash::new(hash.clone())),
                rehash,
                "{hash}"
            );
        }
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

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_at_the_lowest_priority() {
        let h = hasher(1, 0);
        // SAFETY: reads the calling (hashing) thread's own nice value.
        let nice = h
            .run(|| unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) })
            .await
            .unwrap();
        assert_eq!(nice, 19);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_request_keeps_its_slot_until_its_job_is_done() {
        let h = Arc::new(hasher(1, 0));
        let started = Arc::new(std::sync::Barrier::new(2));
        let in_job = Arc::clone(&started);
        let worker = Arc::clone(&h);
        let caller = tokio::spawn(async move {
            worker
                .run(move || {
                    in_job.wait();
                    std::thread::sleep(std::time::Duration::from_millis(200));
                })
                .await
        });
        tokio::task::spawn_blocking(move || started.wait())
            .await
            .unwrap();
        caller.abort();
        assert_eq!(h.in_flight(), 1);
        let refused = h.verify("whatever", &PasswordHash::new("x".into())).await;
        assert!(matches!(refused, Err(BackendError::Overloaded)));
        while h.in_flight() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
