//! The read deadline of an HTTP/1.1 connection: a request must arrive whole, headers and body,
//! within a fixed time of its first byte, or the connection is closed.
//!
//! The clock starts when the first byte of a request is read off the connection and stops when
//! the handler has read the body whole (or has answered without reading it). An idle keep-alive
//! connection has no clock running: the idle timeout governs it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// When the request being read on one connection started.
#[derive(Debug)]
pub struct ReadClock {
    epoch: Instant,
    /// Milliseconds since `epoch` plus one when a request is being read; 0 when none is.
    started: AtomicU64,
    started_notify: Notify,
}

impl Default for ReadClock {
    fn default() -> Self {
        Self { epoch: Instant::now(), started: AtomicU64::new(0), started_notify: Notify::new() }
    }
}

impl ReadClock {
    /// Bytes arrived on the connection: a request is being read from now, unless one already is.
    pub fn bytes_arrived(&self) {
        if self.started.load(Ordering::Relaxed) != 0 {
            return;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        if self.started.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.started_notify.notify_one();
        }
    }

    /// The request has been read whole, or answered: stop the clock.
    pub fn request_read(&self) {
        self.started.store(0, Ordering::Release);
    }

    /// Completes once a request has been read for longer than `timeout`.
    pub async fn overdue(&self, timeout: Duration) {
        loop {
            let started = self.started.load(Ordering::Acquire);
            if started == 0 {
                self.started_notify.notified().await;
                continue;
            }
            let deadline = self.epoch + Duration::from_millis(started - 1) + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_only_while_a_request_is_being_read() {
        let clock = ReadClock::default();
        let timeout = Duration::from_millis(100);
        // Idle: nothing fires.
        assert!(tokio::time::timeout(Duration::from_millis(300), clock.overdue(timeout)).await.is_err());
        // A request read in time: nothing fires afterwards.
        clock.bytes_arrived();
        tokio::time::sleep(Duration::from_millis(50)).await;
        clock.request_read();
        assert!(tokio::time::timeout(Duration::from_millis(300), clock.overdue(timeout)).await.is_err());
    }

    #[tokio::test]
    async fn fires_when_a_request_is_not_read_in_time() {
        let clock = ReadClock::default();
        clock.bytes_arrived();
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(2), clock.overdue(Duration::from_millis(100)))
            .await
            .expect("fires after the timeout");
        assert!(started.elapsed() >= Duration::from_millis(90));
        // Later bytes of the same request do not restart it.
        clock.bytes_arrived();
        tokio::time::timeout(Duration::from_millis(20), clock.overdue(Duration::from_millis(100)))
            .await
            .expect("still overdue");
    }
}
