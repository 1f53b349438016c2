//! Request and answer bodies: held under a byte budget shared by every connection, so the
//! memory that buffered bodies take has a fixed ceiling whatever clients send.
//!
//! A request body is charged to the budget as its buffer grows (never for what a client merely
//! declares in `Content-Length`), and the charge is returned when the buffer is dropped, after
//! the review that reads it has answered. An answer is charged until it has been handed to the
//! connection. Whatever would take the budget past its size is refused at once instead of
//! waiting for room.
//!
//! Two rules keep large or slow bodies from starving ordinary reviews: a share of the budget is
//! kept for small bodies and answers (at most [`SMALL_BODY_BYTES`]), which large ones cannot
//! take; and each client (peer IP address) may hold at most its own share of the whole, and at
//! most half of the small bodies' share.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::sync::Semaphore;

/// The client a request came from: its IP address, the same for all its connections (an
/// IPv4 address seen through an IPv6 socket counts as the IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer(IpAddr);

impl Peer {
    /// The client at the far end of a connection from `addr`.
    pub fn of(addr: SocketAddr) -> Self {
        Self(addr.ip().to_canonical())
    }

    /// Stands for the client when none is known (a router driven without a socket).
    pub const UNKNOWN: Peer = Peer(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
}

/// Bytes of the budget kept for small bodies and answers (at most [`SMALL_BODY_BYTES`] each):
/// about a thousand ordinary reviews of a few KiB, whatever large bodies hold meanwhile.
pub const SMALL_RESERVE_BYTES: usize = 4 * 1024 * 1024;

/// Bytes that buffered request bodies and answers may take, all connections together: a share
/// for small ones that large ones cannot take, and a cap per client.
#[derive(Debug)]
pub struct BodyBudget {
    ledger: Arc<Mutex<Ledger>>,
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
    /// Buffering it would take what this client holds past its share of the budget (429).
    #[error("this client is sending too many request bodies at once, retry later")]
    PeerOverBudget,
    /// The connection failed while the body was read (400).
    #[error("cannot read the body: {0}")]
    Read(#[from] axum::Error),
}

/// What is held, in all and per client; the limits it is held to.
#[derive(Debug)]
struct Ledger {
    /// Bytes that large bodies may take (the budget less the small bodies' share).
    shared_size: usize,
    reserve_size: usize,
    peer_size: usize,
    shared: usize,
    reserve: usize,
    peers: HashMap<Peer, Held>,
}

/// Bytes one client holds: in all, and of the small bodies' share.
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    total: usize,
    reserve: usize,
}

impl Ledger {
    /// Takes `bytes` more for `charge`, from the small bodies' share when `small` and there is
    /// room in it (and in the client's half of it), otherwise from the rest; a charge that
    /// stops being small moves what it held in the small bodies' share to the rest.
    fn grow(&mut self, charge: &mut Charge, bytes: usize, small: bool) -> Result<(), BodyError> {
        let held = self.peers.get(&charge.peer).copied().unwrap_or_default();
        if held.total + bytes > self.peer_size {
            return Err(BodyError::PeerOverBudget);
        }
        let in_reserve =
            small && self.reserve + bytes <= self.reserve_size && held.reserve + bytes <= self.reserve_size / 2;
        let (to_reserve, to_shared, moved) = match (in_reserve, small) {
            (true, _) => (bytes, 0, 0),
            (false, true) => (0, bytes, 0),
            (false, false) => (0, bytes + charge.reserve, charge.reserve),
        };
        if self.shared + to_shared > self.shared_size {
            return Err(BodyError::OverBudget);
        }
        self.shared += to_shared;
        self.reserve = self.reserve + to_reserve - moved;
        let held = self.peers.entry(charge.peer).or_default();
        held.total += bytes;
        held.reserve = held.reserve + to_reserve - moved;
        charge.shared += to_shared;
        charge.reserve = charge.reserve + to_reserve - moved;
        Ok(())
    }

    fn release(&mut self, charge: &Charge) {
        self.shared -= charge.shared;
        self.reserve -= charge.reserve;
        if let Some(held) = self.peers.get_mut(&charge.peer) {
            held.total -= charge.shared + charge.reserve;
            held.reserve -= charge.reserve;
            if held.total == 0 {
                self.peers.remove(&charge.peer);
            }
        }
    }
}

/// Bytes taken from the budget for one body or answer; given back when dropped.
#[derive(Debug)]
struct Charge {
    ledger: Arc<Mutex<Ledger>>,
    peer: Peer,
    shared: usize,
    reserve: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner).release(self);
    }
}

impl BodyBudget {
    /// A budget of `size` bytes, of which [`SMALL_RESERVE_BYTES`] (at most half of it) are kept
    /// for small bodies, and of which one client may hold at most `per_peer` bytes.
    pub fn new(size: usize, per_peer: usize) -> Self {
        let reserve_size = SMALL_RESERVE_BYTES.min(size / 2);
        let ledger = Ledger {
            shared_size: size - reserve_size,
            reserve_size,
            peer_size: per_peer,
            shared: 0,
            reserve: 0,
            peers: HashMap::new(),
        };
        Self { ledger: Arc::new(Mutex::new(ledger)), size }
    }

    /// The budget's size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Bytes currently taken by buffered bodies.
    pub fn in_use(&self) -> usize {
        let ledger = self.ledger.lock().unwrap_or_else(PoisonError::into_inner);
        ledger.shared + ledger.reserve
    }

    fn charge(&self, peer: Peer) -> Charge {
        Charge { ledger: self.ledger.clone(), peer, shared: 0, reserve: 0 }
    }

    /// Takes `bytes` more for `charge`, or fails at once when there is not enough left.
    fn grow(&self, charge: &mut Charge, bytes: usize, small: bool) -> Result<(), BodyError> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner).grow(charge, bytes, small)
    }

    /// An answer of `bytes` to `peer`, charged to the budget until the connection has taken all
    /// of it.
    pub fn answer(&self, peer: Peer, bytes: Vec<u8>) -> Result<Body, BodyError> {
        let mut charge = self.charge(peer);
        self.grow(&mut charge, bytes.len(), bytes.len() <= SMALL_BODY_BYTES)?;
        Ok(Body::new(Answer { bytes: Some(Bytes::from(bytes)), charge: Some(charge) }))
    }

    /// Reads a whole body of at most `limit` bytes from `peer` (`declared` is its
    /// `Content-Length`, if any).
    pub async fn read(
        &self,
        peer: Peer,
        body: Body,
        declared: Option<usize>,
        limit: usize,
    ) -> Result<Buffered, BodyError> {
        if declared.is_some_and(|length| length > limit) {
            return Err(BodyError::TooLarge { limit });
        }
        let mut buffered = Buffered { bytes: Vec::new(), charge: self.charge(peer) };
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
                // A body is small while what it declared, or without a declaration what it has
                // sent, is.
                let ceiling = declared.unwrap_or(limit).max(needed);
                let doubled = buffered.bytes.capacity().saturating_mul(2);
                let capacity = doubled.max(needed).min(ceiling);
                let small = declared.unwrap_or(capacity) <= SMALL_BODY_BYTES;
                self.grow(&mut buffered.charge, capacity - buffered.bytes.capacity(), small)?;
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
    charge: Charge,
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
    charge: Option<Charge>,
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

    const MIB: usize = 1024 * 1024;

    fn body_of(chunks: &[&'static [u8]]) -> Body {
        let chunks: Vec<_> =
            chunks.iter().map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::from_static(c))).collect();
        let stream = futures::stream::iter(chunks);
        Body::from_stream(stream)
    }

    fn peer(last: u8) -> Peer {
        Peer::of(SocketAddr::from(([127, 0, 0, last], 40000)))
    }

    /// A body of `len` bytes, declared, in one chunk.
    async fn read(budget: &BodyBudget, from: Peer, len: usize) -> Result<Buffered, BodyError> {
        static BYTES: [u8; 8 * MIB] = [b' '; 8 * MIB];
        budget.read(from, body_of(&[&BYTES[..len]]), Some(len), 8 * MIB).await
    }

    #[tokio::test]
    async fn reads_chunked_bodies_and_returns_the_charge_when_dropped() {
        let budget = BodyBudget::new(1 << 20, 1 << 20);
        let read = budget.read(peer(1), body_of(&[b"{\"a\":", b"1}"]), None, 1024).await.expect("read");
        assert_eq!(read.bytes(), b"{\"a\":1}");
        assert!(budget.in_use() >= 7, "the buffer is charged while it lives");
        drop(read);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn charges_no_more_than_the_declared_length() {
        let budget = BodyBudget::new(1 << 20, 1 << 20);
        let read = budget.read(peer(1), body_of(&[b"12345"]), Some(5), 1024).await.expect("read");
        assert_eq!(budget.in_use(), 5);
        drop(read);
    }

    #[tokio::test]
    async fn refuses_a_body_over_the_limit_declared_or_not() {
        let budget = BodyBudget::new(1 << 20, 1 << 20);
        let declared = budget.read(peer(1), body_of(&[b"x"]), Some(2048), 1024).await;
        assert!(matches!(declared, Err(BodyError::TooLarge { limit: 1024 })));
        static BIG: [u8; 2048] = [b' '; 2048];
        let grown = budget.read(peer(1), body_of(&[&BIG[..1000], &BIG[1000..]]), None, 1024).await;
        assert!(matches!(grown, Err(BodyError::TooLarge { .. })));
        assert_eq!(budget.in_use(), 0, "a refused body returns its charge");
    }

    #[tokio::test]
    async fn refuses_large_bodies_at_once_when_their_share_is_taken() {
        // 16 MiB: 12 for large bodies, 4 kept for small ones.
        let budget = BodyBudget::new(16 * MIB, 16 * MIB);
        let first = read(&budget, peer(1), 6 * MIB).await.expect("fits");
        let second = read(&budget, peer(2), 6 * MIB).await.expect("fits");
        let third = read(&budget, peer(3), MIB).await;
        assert!(matches!(third, Err(BodyError::OverBudget)), "the small bodies' share is not for large ones");
        drop(first);
        assert!(read(&budget, peer(3), MIB).await.is_ok(), "room again once the first body is dropped");
        drop(second);
    }

    #[tokio::test]
    async fn small_bodies_are_read_while_large_ones_take_all_they_may() {
        let budget = BodyBudget::new(16 * MIB, 16 * MIB);
        let large = [read(&budget, peer(1), 6 * MIB).await, read(&budget, peer(2), 6 * MIB).await];
        assert!(large.iter().all(Result::is_ok));
        // Two clients, each up to half of the small bodies' share: 2 MiB, 32 bodies of 64 KiB.
        let mut small = Vec::new();
        for from in [peer(3), peer(4)] {
            for _ in 0..32 {
                small.push(read(&budget, from, SMALL_BODY_BYTES).await.expect("a small body fits"));
            }
        }
        assert_eq!(budget.in_use(), 16 * MIB);
        assert!(matches!(read(&budget, peer(5), 1).await, Err(BodyError::OverBudget)), "all taken now");
    }

    #[tokio::test]
    async fn one_client_takes_at_most_half_of_the_small_bodies_share() {
        let budget = BodyBudget::new(16 * MIB, 16 * MIB);
        let large = [read(&budget, peer(1), 6 * MIB).await, read(&budget, peer(1), 6 * MIB).await];
        assert!(large.iter().all(Result::is_ok));
        let mut slow = Vec::new();
        for _ in 0..32 {
            slow.push(read(&budget, peer(2), SMALL_BODY_BYTES).await.expect("within its half"));
        }
        assert!(matches!(read(&budget, peer(2), 4096).await, Err(BodyError::OverBudget)));
        let ordinary = read(&budget, peer(3), 4096).await;
        assert!(ordinary.is_ok(), "another client's review still fits");
    }

    #[tokio::test]
    async fn one_client_holds_at_most_its_share() {
        let budget = BodyBudget::new(28 * MIB, 14 * MIB);
        let held = [read(&budget, peer(1), 7 * MIB).await, read(&budget, peer(1), 7 * MIB).await];
        assert!(held.iter().all(Result::is_ok), "two of the largest bodies fit in one client's share");
        assert!(matches!(read(&budget, peer(1), 1).await, Err(BodyError::PeerOverBudget)));
        assert!(matches!(budget.answer(peer(1), vec![b'x'; 10]), Err(BodyError::PeerOverBudget)));
        let other = read(&budget, peer(2), 7 * MIB).await;
        assert!(other.is_ok(), "another client has its own share");
        drop(held);
        assert!(read(&budget, peer(1), 7 * MIB).await.is_ok(), "the share comes back with the bodies");
    }

    #[tokio::test]
    async fn a_chunked_body_that_outgrows_small_moves_to_the_large_share() {
        let budget = BodyBudget::new(16 * MIB, 16 * MIB);
        static BYTES: [u8; 256 * 1024] = [b' '; 256 * 1024];
        let chunks: Vec<&'static [u8]> = BYTES.chunks(16 * 1024).collect();
        let grown = budget.read(peer(1), body_of(&chunks), None, 8 * MIB).await.expect("read");
        assert_eq!(grown.bytes().len(), BYTES.len());
        // The whole small bodies' share is still free for small ones: 2 MiB per client.
        let mut small = Vec::new();
        for from in [peer(2), peer(3)] {
            for _ in 0..32 {
                small.push(read(&budget, from, SMALL_BODY_BYTES).await.expect("a small body fits"));
            }
        }
        drop((grown, small));
        assert_eq!(budget.in_use(), 0);
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
        let budget = BodyBudget::new(16 * MIB, 16 * MIB);
        assert!(matches!(budget.answer(peer(1), vec![b' '; 13 * MIB]), Err(BodyError::OverBudget)));
        let answer = budget.answer(peer(1), vec![b'x'; 30 * 1024]).expect("fits");
        assert_eq!(budget.in_use(), 30 * 1024);
        let bytes = answer.collect().await.expect("infallible").to_bytes();
        assert_eq!(bytes.len(), 30 * 1024);
        assert_eq!(budget.in_use(), 0);
    }
}
