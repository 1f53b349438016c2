//! A connection's deadlines for the client's part of the work: a request must arrive whole,
//! headers and body, within a fixed time of its first byte, and an answer must be taken within
//! the same time of the connection first pushing back; otherwise the connection is closed.
//!
//! The read clock starts when the first byte of a request is read off the connection and stops
//! when the handler has read the body whole (or has answered without reading it); an idle
//! keep-alive connection has no clock running, the idle timeout governs it. The write clock
//! starts when writing would block and stops when everything written has been flushed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Which of the client's parts was not done in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdue {
    /// The request did not arrive whole.
    Read,
    /// The answer was not taken.
    Write,
}

/// When the request being read, and the answer being written, on one connection started.
#[derive(Debug)]
pub struct Deadlines {
    epoch: Instant,
    /// Milliseconds since `epoch` plus one while a request is being read; 0 when none is.
    reading: AtomicU64,
    /// Milliseconds since `epoch` plus one while written bytes wait for the client; 0 otherwise.
    writing: AtomicU64,
    started: Notify,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self { epoch: Instant::now(), reading: AtomicU64::new(0), writing: AtomicU64::new(0), started: Notify::new() }
    }
}

impl Deadlines {
    fn start(&self, clock: &AtomicU64) {
        if clock.load(Ordering::Relaxed) != 0 {
            return;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        if clock.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.started.notify_one();
        }
    }

    /// Bytes arrived on the connection: a request is being read from now, unless one already is.
    pub fn bytes_arrived(&self) {
        self.start(&self.reading);
    }

    /// The request has been read whole, or answered: stop the read clock.
    pub fn request_read(&self) {
        self.reading.store(0, Ordering::Release);
    }

    /// Writing would block: the client has not taken what was sent.
    pub fn write_blocked(&self) {
        self.start(&self.writing);
    }

    /// Everything written has been flushed to the client.
    pub fn write_flushed(&self) {
        self.writing.store(0, Ordering::Release);
    }

    /// Completes once a request has been read, or an answer has waited for the client, for
    /// longer than `timeout`.
    pub async fn overdue(&self, timeout: Duration) -> Overdue {
        loop {
            let started = |clock: &AtomicU64| match clock.load(Ordering::Acquire) {
                0 => None,
                millis => Some(self.epoch + Duration::from_millis(millis - 1) + timeout),
            };
            let next = match (started(&self.reading), started(&self.writing)) {
                (None, None) => {
                    self.started.notified().await;
                    continue;
                }
                (Some(read), None) => (read, Overdue::Read),
                (None, Some(write)) => (write, Overdue::Write),
                (Some(read), Some(write)) if read <= write => (read, Overdue::Read),
                (Some(_), Some(write)) => (write, Overdue::Write),
            };
            if Instant::now() >= next.0 {
                return next.1;
            }
            // Wake at the deadline, or earlier when another clock starts.
            tokio::select! {
                () = tokio::time::sleep_until(next.0) => {}
                () = self.started.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_only_while_a_request_is_being_read() {
        let deadlines = Deadlines::default();
        let timeout = Duration::from_millis(100);
        // Idle: nothing fires.
        assert!(tokio::time::timeout(Duration::from_millis(300), deadlines.overdue(timeout)).await.is_err());
        // A request read in time: nothing fires afterwards.
        deadlines.bytes_arrived();
        tokio::time::sleep(Duration::from_millis(50)).await;
        deadlines.request_read();
        assert!(tokio::time::timeout(Duration::from_millis(300), deadlines.overdue(timeout)).await.is_err());
    }

    #[tokio::test]
    async fn fires_when_a_request_is_not_read_in_time() {
        let deadlines = Deadlines::default();
        deadlines.bytes_arrived();
        let started = Instant::now();
        let overdue = tokio::time::timeout(Duration::from_secs(2), deadlines.overdue(Duration::from_millis(100)))
            .await
            .expect("fires after the timeout");
        assert_eq!(overdue, Overdue::Read);
        assert!(started.elapsed() >= Duration::from_millis(90));
        // Later bytes of the same request do not restart it.
        deadlines.bytes_arrived();
        tokio::time::timeout(Duration::from_millis(20), deadlines.overdue(Duration::from_millis(100)))
            .await
            .expect("still overdue");
    }

    #[tokio::test]
    async fn fires_when_an_answer_is_not_taken_in_time() {
        let deadlines = Deadlines::default();
        let timeout = Duration::from_millis(100);
        deadlines.write_blocked();
        deadlines.write_flushed();
        assert!(tokio::time::timeout(Duration::from_millis(300), deadlines.overdue(timeout)).await.is_err());
        deadlines.write_blocked();
        let overdue = tokio::time::timeout(Duration::from_secs(2), deadlines.overdue(timeout)).await;
        assert_eq!(overdue.expect("fires"), Overdue::Write);
    }
}
