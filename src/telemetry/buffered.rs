//! Log lines through a buffer, as nginx's `access_log ... buffer= flush=` does.
//!
//! Writing each line with its own system call was a quarter of a request's cost with the
//! access log on (issue 26); handing each line to a writer thread woke that thread per line,
//! which cost as much and delayed the answer. Here a line is copied into a shared buffer under
//! a lock, and a thread of its own writes the buffer out in one call when it fills and at least
//! every [`FLUSH_EVERY`], and when the guard is dropped. A `kill -9` loses at
//! most that much of the log; a stop, a panic unwinding to `main` or a normal exit lose nothing.

use std::io::Write as _;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// The longest a line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// The flushing thread is woken when the buffer holds this much.
const CAPACITY: usize = 64 * 1024;

/// A line that finds this much still buffered (the flushing thread is behind) writes it out
/// itself: the log holds requests back rather than grow without bound.
const LIMIT: usize = 16 * CAPACITY;

/// The log's writer, in front of an output (stderr).
pub struct Buffered(Arc<Shared>);

/// What [`Buffered`] hands the formatter for each line.
pub struct Line<'a>(&'a Shared);

type Output = Box<dyn std::io::Write + Send>;

struct Shared {
    buffer: Mutex<Buffer>,
    /// Locked while writing, and taken before the buffer's lock is let go: chunks go out in the
    /// order they were taken.
    sink: Mutex<Sink>,
    wake: Condvar,
}

/// Where chunks go, and the empty buffer the next chunk's lines go into: the two buffers take
/// turns, so that writing allocates nothing.
struct Sink {
    output: Output,
    spare: Vec<u8>,
}

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    stopping: bool,
}

/// Stops the flushing thread and writes out what is left, when dropped.
pub struct LogGuard {
    shared: Arc<Shared>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl Buffered {
    /// The writer in front of `output`, and the guard that owns its flushing thread.
    pub fn start(output: impl std::io::Write + Send + 'static) -> (Self, LogGuard) {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                bytes: Vec::with_capacity(CAPACITY),
                stopping: false,
            }),
            sink: Mutex::new(Sink {
                output: Box::new(output),
                spare: Vec::with_capacity(CAPACITY),
            }),
            wake: Condvar::new(),
        });
        let flushing = Arc::clone(&shared);
        let flusher = std::thread::Builder::new()
            .name("portcullis-log".into())
            .spawn(move || flushing.flush_periodically())
            .ok();
        (Self(Arc::clone(&shared)), LogGuard { shared, flusher })
    }
}

impl Shared {
    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        // A panic while a line was copied in leaves a buffer that is still bytes: keep going.
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes what `buffer` holds and writes it, in order with every other chunk.
    fn write_out(&self, mut buffer: MutexGuard<'_, Buffer>) {
        if buffer.bytes.is_empty() {
            return;
        }
        let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        let spare = std::mem::take(&mut sink.spare);
        let mut chunk = std::mem::replace(&mut buffer.bytes, spare);
        drop(buffer);
        // A log has nowhere to report that it could not be written.
        let _ = sink
            .output
            .write_all(&chunk)
            .and_then(|()| sink.output.flush());
        chunk.clear();
        // A buffer that grew while the output was slow does not keep all it took.
        chunk.shrink_to(LIMIT);
        sink.spare = chunk;
    }

    fn flush_periodically(&self) {
        let mut buffer = self.buffer();
        while !buffer.stopping {
            buffer = self
                .wake
                .wait_timeout(buffer, FLUSH_EVERY)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            self.write_out(buffer);
            buffer = self.buffer();
        }
    }
}

impl std::io::Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self.0.buffer();
        let before = buffer.bytes.len();
        buffer.bytes.extend_from_slice(bytes);
        if buffer.bytes.len() >= LIMIT {
            self.0.write_out(buffer);
        } else if before < CAPACITY && buffer.bytes.len() >= CAPACITY {
            self.0.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffered {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(&self.0)
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.buffer().stopping = true;
        self.shared.wake.notify_one();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        self.shared.write_out(self.shared.buffer());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::telemetry::Captured;

    #[test]
    fn lines_arrive_whole_in_order_and_all_of_them_by_the_guards_drop() {
        let seen = Captured::default();
        let (writer, guard) = Buffered::start(seen.clone());
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let writer = &writer;
                scope.spawn(move || {
                    for n in 0..5_000 {
                        let line = format!("thread {thread} line {n:05} {}\n", "x".repeat(n % 90));
                        writer.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                });
            }
        });
        drop(guard);
        let text = seen.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20_000);
        for thread in 0..4 {
            let own: Vec<usize> = lines
                .iter()
                .filter_map(|line| line.strip_prefix(&format!("thread {thread} line ")))
                .map(|rest| rest[..5].parse().unwrap())
                .collect();
            assert_eq!(own, (0..5_000).collect::<Vec<_>>(), "thread {thread}");
        }
    }

    #[test]
    fn a_quiet_log_is_written_within_the_flush_period() {
        let seen = Captured::default();
        let (writer, _guard) = Buffered::start(seen.clone());
        writer.make_writer().write_all(b"one line\n").unwrap();
        let deadline = std::time::Instant::now() + FLUSH_EVERY * 20;
        while seen.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*seen.0.lock().unwrap(), b"one line\n");
    }
}
