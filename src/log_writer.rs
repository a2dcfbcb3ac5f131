//! Log lines to stderr without a request ever waiting for stderr: each line
//! is appended to an in-memory buffer, and a thread of its own writes the
//! buffer out in batches (one `write` for many lines). When stderr is slower
//! than the lines (a stalled log pipeline), the buffer fills to
//! [`CAPACITY`] and further lines are dropped, counted in
//! `line_auth_proxy_log_lines_dropped_total`, rather than blocking requests.
//! [`flush`] writes out what is buffered: the binary calls it on every exit.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tracing_subscriber::fmt::MakeWriter;

/// Bytes of log lines buffered at most (1 MiB: several thousand lines).
pub const CAPACITY: usize = 1 << 20;
/// After the first line into an empty buffer, how long the writer waits
/// for more before writing (5 ms): lines come out in batches, a few
/// milliseconds late.
const BATCH_WAIT: Duration = Duration::from_millis(5);

/// The longest [`flush`] waits for stderr (5 seconds).
const FLUSH_LIMIT: Duration = Duration::from_secs(5);
const FLUSH_POLL: Duration = Duration::from_millis(50);

/// Lines dropped because the buffer was full (registered with the metrics).
pub static DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The buffer of this process, once [`StderrBuffer::install`] ran.
static INSTALLED: OnceLock<Arc<Shared>> = OnceLock::new();

struct Shared {
    buffer: Mutex<Buffer>,
    /// Signalled when the first line enters an empty buffer, and to stop.
    wake: Condvar,
    /// Signalled by the writer after each batch written (for [`flush`]).
    written: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct Buffer {
    lines: Vec<u8>,
    /// A batch is being written (taken out of `lines`).
    writing: bool,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, line: &[u8]) {
        let mut buffer = self.lock();
        if buffer.lines.len() + line.len() > self.capacity {
            drop(buffer);
            DROPPED.inc();
            return;
        }
        let was_empty = buffer.lines.is_empty();
        buffer.lines.extend_from_slice(line);
        drop(buffer);
        if was_empty {
            self.wake.notify_one();
        }
    }

    /// The writer thread: waits for lines, lets a batch gather, writes it.
    fn run(&self, mut out: impl Write) {
        let mut batch = Vec::with_capacity(64 * 1024);
        loop {
            let mut buffer = self.lock();
            while buffer.lines.is_empty() && !buffer.stop {
                buffer = self.wake.wait(buffer).unwrap_or_else(|p| p.into_inner());
            }
            if buffer.lines.is_empty() && buffer.stop {
                return;
            }
            if !buffer.stop && buffer.lines.len() < self.capacity / 2 {
                drop(buffer);
                std::thread::sleep(BATCH_WAIT);
                buffer = self.lock();
            }
            std::mem::swap(&mut buffer.lines, &mut batch);
            buffer.writing = true;
            drop(buffer);
            // Nothing useful can be done about a failing stderr: the lines are lost.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            // Give back memory a burst took.
            batch.shrink_to(64 * 1024);
            self.lock().writing = false;
            self.written.notify_all();
        }
    }

    /// Waits until everything buffered before the call is written, or
    /// [`FLUSH_LIMIT`] passed (a stderr stalled for good must not keep the
    /// process from exiting).
    fn flush(&self) {
        // Measured, not counted in waits: every batch written wakes this
        // early, so counting would give up long before the limit.
        let waited = crate::clock::Stopwatch::start();
        let mut buffer = self.lock();
        while (!buffer.lines.is_empty() || buffer.writing) && waited.elapsed() < FLUSH_LIMIT {
            buffer = self.written.wait_timeout(buffer, FLUSH_POLL).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// The [`MakeWriter`] of the binary's log lines: stderr, through the buffer.
#[derive(Clone)]
pub struct StderrBuffer(Arc<Shared>);

impl StderrBuffer {
    /// Starts the writer thread (once per process; later calls share it).
    pub fn install() -> Self {
        Self::install_to(CAPACITY, std::io::stderr)
    }

    fn install_to<W: Write + 'static>(capacity: usize, out: impl FnOnce() -> W + Send + 'static) -> Self {
        let started = AtomicBool::new(false);
        let shared = INSTALLED.get_or_init(|| {
            started.store(true, Ordering::Relaxed);
            Arc::new(Shared { buffer: Mutex::default(), wake: Condvar::new(), written: Condvar::new(), capacity })
        });
        if started.load(Ordering::Relaxed) {
            let writer = shared.clone();
            let spawned = std::thread::Builder::new().name("log-writer".into()).spawn(move || writer.run(out()));
            if let Err(e) = spawned {
                eprintln!("warning: cannot start the log writer thread ({e}); log lines are lost");
            }
        }
        Self(shared.clone())
    }
}

/// Writes out every line buffered so far (and waits for it). Does nothing
/// when no buffer was installed.
pub fn flush() {
    if let Some(shared) = INSTALLED.get() {
        shared.flush();
    }
}

/// One log line's writer: tracing formats a line whole and writes it with
/// one `write_all`, so each `write` here is one line.
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for StderrBuffer {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that blocks its writer until released, collecting what it got.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.open;
            let mut g = open.lock().unwrap();
            while !*g {
                g = cv.wait(g).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn shared(capacity: usize) -> Arc<Shared> {
        Arc::new(Shared { buffer: Mutex::default(), wake: Condvar::new(), written: Condvar::new(), capacity })
    }

    #[test]
    fn lines_come_out_whole_in_order_and_flush_waits_for_them() {
        let shared = shared(1 << 16);
        let gate = Gate::default();
        *gate.open.0.lock().unwrap() = true;
        let (w, out) = (shared.clone(), gate.clone());
        let thread = std::thread::spawn(move || w.run(out));
        for i in 0..100 {
            Line(&shared).write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        shared.flush();
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(gate.got.lock().unwrap().clone()).unwrap(), expected);
        shared.lock().stop = true;
        shared.wake.notify_one();
        thread.join().unwrap();
    }

    #[test]
    fn a_stalled_stderr_drops_lines_and_counts_them_without_blocking() {
        let shared = shared(1000);
        let gate = Gate::default();
        let (w, out) = (shared.clone(), gate.clone());
        let thread = std::thread::spawn(move || w.run(out));
        let before = DROPPED.get();
        // 100 lines of 100 bytes into 1000 bytes, the writer stuck: most are
        // dropped, and no write here waits for the writer.
        let line = [b'x'; 99].iter().copied().chain(std::iter::once(b'\n')).collect::<Vec<_>>();
        for _ in 0..100 {
            Line(&shared).write_all(&line).unwrap();
        }
        let dropped = DROPPED.get() - before;
        // Kept: at most the batch in the writer's hands and a full buffer.
        assert!((80..=90).contains(&dropped), "dropped {dropped}");
        // Released, the writer writes what it kept, and new lines go through.
        {
            let (open, cv) = &*gate.open;
            *open.lock().unwrap() = true;
            cv.notify_all();
        }
        shared.flush();
        Line(&shared).write_all(b"after\n").unwrap();
        shared.flush();
        let got = String::from_utf8(gate.got.lock().unwrap().clone()).unwrap();
        assert!(got.ends_with("after\n"));
        assert_eq!(got.lines().count() as u64, 100 - dropped + 1);
        shared.lock().stop = true;
        shared.wake.notify_one();
        thread.join().unwrap();
    }
}
