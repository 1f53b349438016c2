//! Request and answer bodies: held under a byte budget shared by every connection, so the
//! memory that buffered bodies take has a fixed ceiling whatever clients send.
//!
//! A request body is charged to the budget as its buffer grows (never for what a client merely
//! declares in `Content-Length`), and the charge is returned when the buffer is dropped, after
//! the review that reads it has answered. An answer is charged until it has been handed to the
//! connection. Whatever would take the budget past its size is refused at once instead of
//! waiting for room.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes that buffered request bodies may take, all connections together.
#[derive(Debug)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    size: usize,
}

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than the per-request limit (413).
    #[error("the body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    /// Buffering it would take the bodies being read past the budget (503).
    #[error("tokengate is reading too many request bodies at once, retry later")]
    OverBudget,
    /// The connection failed while the body was read (400).
    #[error("cannot read the body: {0}")]
    Read(#[from] axum::Error),
}

impl BodyBudget {
    /// A budget of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self { bytes: Arc::new(Semaphore::new(size.min(Semaphore::MAX_PERMITS))), size }
    }

    /// The budget's size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Bytes currently taken by buffered bodies.
    pub fn in_use(&self) -> usize {
        self.size.saturating_sub(self.bytes.available_permits())
    }

    /// Takes `bytes` more from the budget, or fails at once when there is not enough left.
    fn charge(&self, bytes: usize) -> Result<OwnedSemaphorePermit, BodyError> {
        let bytes = u32::try_from(bytes).map_err(|_| BodyError::OverBudget)?;
        self.bytes.clone().try_acquire_many_owned(bytes).map_err(|_| BodyError::OverBudget)
    }

    /// An answer of `bytes`, charged to the budget until the connection has taken all of it.
    pub fn answer(&self, bytes: Vec<u8>) -> Result<Body, BodyError> {
        let charge = self.charge(bytes.len())?;
        Ok(Body::new(Answer { bytes: Some(Bytes::from(bytes)), charge: Some(charge) }))
    }

    /// Reads a whole body of at most `limit` bytes (`declared` is its `Content-Length`, if any).
    pub async fn read(&self, body: Body, declared: Option<usize>, limit: usize) -> Result<Buffered, BodyError> {
        if declared.is_some_and(|length| length > limit) {
            return Err(BodyError::TooLarge { limit });
        }
        let mut buffered = Buffered { bytes: Vec::new(), charge: None };
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            let needed = buffered.bytes.len() + data.len();
            if needed > limit {
                return Err(BodyError::TooLarge { limit });
            }
            if needed > buffered.bytes.capacity() {
                // Grow by doubling (up to what was declared, or the limit), and charge the
                // budget for the new capacity before allocating it. The first allocation is the
                // first chunk's size: a client that sends one byte holds one byte of the budget.
                let ceiling = declared.unwrap_or(limit).max(needed);
                let doubled = buffered.bytes.capacity().saturating_mul(2);
                let capacity = doubled.max(needed).min(ceiling);
                let more = self.charge(capacity - buffered.bytes.capacity())?;
                match buffered.charge.as_mut() {
                    Some(charge) => charge.merge(more),
                    None => buffered.charge = Some(more),
                }
                buffered.bytes.reserve_exact(capacity - buffered.bytes.len());
            }
            buffered.bytes.extend_from_slice(&data);
        }
        Ok(buffered)
    }
}

/// Bodies above this size are decoded from the large pool, the others from the small pool.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;

/// Bytes of small bodies decoded at once: hundreds of ordinary reviews (a Pod review is a few
/// KiB), whatever large bodies are being decoded meanwhile.
pub const SMALL_POOL_BYTES: usize = 1024 * 1024;

/// Bytes of request bodies being reviewed at once. Decoding takes memory in proportion to the
/// body, so this bounds it: one body of the largest size (or several large ones) from the large
/// pool, and small bodies from a pool of their own, so that an ordinary review never waits for
/// a large body's.
#[derive(Debug)]
pub struct DecodeBudget {
    large: Semaphore,
    small: Semaphore,
}

impl DecodeBudget {
    /// Pools of `large` and [`SMALL_POOL_BYTES`] bytes.
    pub fn new(large: usize) -> Self {
        Self { large: Semaphore::new(large), small: Semaphore::new(SMALL_POOL_BYTES) }
    }

    /// Waits up to `wait` for room to decode a body of `len` bytes.
    pub async fn admit(&self, len: usize, wait: std::time::Duration) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let pool = if len > SMALL_BODY_BYTES { &self.large } else { &self.small };
        let weight = u32::try_from(len.max(1)).ok()?;
        tokio::time::timeout(wait, pool.acquire_many(weight)).await.ok()?.ok()
    }
}

/// A body read whole; its bytes count against the budget until it is dropped.
#[derive(Debug)]
pub struct Buffered {
    bytes: Vec<u8>,
    charge: Option<OwnedSemaphorePermit>,
}

impl Buffered {
    /// The body.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// An answer's bytes, holding their charge until the connection asks for the end of the body
/// (it does once it has room for more, so most of the bytes have left by then) or drops it.
struct Answer {
    bytes: Option<Bytes>,
    charge: Option<OwnedSemaphorePermit>,
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.bytes.take() {
            Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            None => {
                self.charge = None;
                Poll::Ready(None)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(chunks: &[&'static [u8]]) -> Body {
        let chunks: Vec<_> =
            chunks.iter().map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::from_static(c))).collect();
        let stream = futures::stream::iter(chunks);
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn reads_chunked_bodies_and_returns_the_charge_when_dropped() {
        let budget = BodyBudget::new(1 << 20);
        let read = budget.read(body_of(&[b"{\"a\":", b"1}"]), None, 1024).await.expect("read");
        assert_eq!(read.bytes(), b"{\"a\":1}");
        assert!(budget.in_use() >= 7, "the buffer is charged while it lives");
        drop(read);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn charges_no_more_than_the_declared_length() {
        let budget = BodyBudget::new(1 << 20);
        let read = budget.read(body_of(&[b"12345"]), Some(5), 1024).await.expect("read");
        assert_eq!(budget.in_use(), 5);
        drop(read);
    }

    #[tokio::test]
    async fn refuses_a_body_over_the_limit_declared_or_not() {
        let budget = BodyBudget::new(1 << 20);
        let declared = budget.read(body_of(&[b"x"]), Some(2048), 1024).await;
        assert!(matches!(declared, Err(BodyError::TooLarge { limit: 1024 })));
        static BIG: [u8; 2048] = [b' '; 2048];
        let grown = budget.read(body_of(&[&BIG[..1000], &BIG[1000..]]), None, 1024).await;
        assert!(matches!(grown, Err(BodyError::TooLarge { .. })));
        assert_eq!(budget.in_use(), 0, "a refused body returns its charge");
    }

    #[tokio::test]
    async fn refuses_at_once_when_the_budget_is_taken() {
        let budget = BodyBudget::new(40 * 1024);
        static BIG: [u8; 30 * 1024] = [b' '; 30 * 1024];
        let first = budget.read(body_of(&[&BIG]), Some(BIG.len()), 1 << 20).await.expect("fits");
        let second = budget.read(body_of(&[&BIG]), Some(BIG.len()), 1 << 20).await;
        assert!(matches!(second, Err(BodyError::OverBudget)));
        drop(first);
        let third = budget.read(body_of(&[&BIG]), Some(BIG.len()), 1 << 20).await;
        assert!(third.is_ok(), "room again once the first body is dropped");
    }

    #[tokio::test]
    async fn small_bodies_are_decoded_while_a_large_one_is() {
        let pools = DecodeBudget::new(1 << 20);
        let wait = std::time::Duration::from_millis(50);
        let large = pools.admit(1 << 20, wait).await.expect("room for one large body");
        assert!(pools.admit(SMALL_BODY_BYTES + 1, wait).await.is_none(), "a second large one waits, then is refused");
        let small: Vec<_> = futures::future::join_all((0..16).map(|_| pools.admit(4096, wait))).await;
        assert!(small.iter().all(Option::is_some), "small bodies have their own pool");
        drop(large);
        assert!(pools.admit(1 << 20, wait).await.is_some());
    }

    #[tokio::test]
    async fn charges_answers_until_they_are_taken() {
        let budget = BodyBudget::new(40 * 1024);
        assert!(matches!(budget.answer(vec![b' '; 50 * 1024]), Err(BodyError::OverBudget)));
        let answer = budget.answer(vec![b'x'; 30 * 1024]).expect("fits");
        assert_eq!(budget.in_use(), 30 * 1024);
        let bytes = answer.collect().await.expect("infallible").to_bytes();
        assert_eq!(bytes.len(), 30 * 1024);
        assert_eq!(budget.in_use(), 0);
    }
}
