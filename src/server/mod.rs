//! The HTTPS webhook server: TLS connections, the admin port, reloads and graceful shutdown.

mod body;
mod deadline;
mod routes;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics::{Metrics, Rejection};
use crate::review::lookup::Cluster;
use crate::source::PolicyReceiver;
pub use body::{BodyBudget, Peer, SMALL_RESERVE_BYTES};
use deadline::{Deadlines, Overdue};
pub use routes::{AppState, MAX_BODY_BYTES};
use tls::{CertificateFiles, CertificateStore, TlsError};

/// The most an HTTP/1.1 connection buffers of what it reads, beyond the budgeted bodies.
const MAX_BUF_BYTES: usize = 64 * 1024;

/// The smallest body budget: one body of the largest size beside the share kept for small ones.
pub const MIN_BODY_BUDGET: usize = MAX_BODY_BYTES + SMALL_RESERVE_BYTES;

/// Everything `serve` is configured with: built from the command line
/// (`cli::ServeArgs::server_config`), whose flags hold the one table of defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub certificates: CertificateFiles,
    pub client_ca: Option<PathBuf>,
    pub http2: bool,
    /// Reviews in flight at once (counted once their body is read); more are refused at once
    /// with 503.
    pub max_in_flight: usize,
    /// Bytes that request bodies being read or reviewed may take, all connections together;
    /// a body that does not fit is refused at once with 503. [`SMALL_RESERVE_BYTES`] of it are
    /// kept for small bodies. At least [`MIN_BODY_BUDGET`].
    pub body_budget: usize,
    /// Bytes of the body budget one client (IP address) may hold, all its connections
    /// together; beyond it its bodies are refused at once with 429. At least [`MAX_BODY_BYTES`].
    pub peer_body_budget: usize,
    /// How often certificate files are re-read.
    pub reload_interval: Duration,
    pub handshake_timeout: Duration,
    /// A request (headers and body) must arrive within this of its first byte, or its
    /// connection is closed.
    pub read_timeout: Duration,
    /// Idle keep-alive connections are closed after this; above the API server's 90 s.
    pub idle_timeout: Duration,
    /// After SIGTERM: how long to keep serving (while endpoints stop routing to this pod).
    pub drain_delay: Duration,
    /// After the drain delay: how long in-flight requests may take before exit.
    pub shutdown_timeout: Duration,
    pub log_reviews: bool,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The certificate, key or client CA is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The body budget cannot hold one body of the largest size beside the small bodies' share.
    #[error(
        "the body budget ({budget} bytes) must be at least the largest body and the share kept for small ones \
         ({MIN_BODY_BUDGET} bytes)"
    )]
    BodyBudget { budget: usize },
    /// A client's share of the body budget cannot hold one body of the largest size.
    #[error("the body budget per client ({budget} bytes) must be at least the largest body ({MAX_BODY_BYTES} bytes)")]
    PeerBodyBudget { budget: usize },
    /// A listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A started server: its bound addresses, and how to stop it.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts the graceful shutdown that SIGTERM starts.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the server has shut down.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Loads the certificate (failing fast when it is unusable), binds both ports and serves
/// until [`Running::shutdown`] is called.
pub async fn start<C: Cluster + Send + Sync + 'static>(
    config: ServerConfig,
    policy: PolicyReceiver,
    cluster: Arc<C>,
    metrics: Arc<Metrics>,
) -> Result<Running, ServeError> {
    if config.body_budget < MIN_BODY_BUDGET {
        return Err(ServeError::BodyBudget { budget: config.body_budget });
    }
    if config.peer_body_budget < MAX_BODY_BYTES {
        return Err(ServeError::PeerBodyBudget { budget: config.peer_body_budget });
    }
    let certificates = Arc::new(CertificateStore::load(config.certificates.clone(), metrics.clone())?);
    let tls = tls::server_config(certificates.clone(), config.client_ca.as_deref(), config.http2)?;
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
    };
    let listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let admin_addr =
        admin_listener.local_addr().map_err(|source| ServeError::Bind { addr: config.admin_listen, source })?;

    let state = Arc::new(AppState {
        policy,
        cluster,
        metrics,
        in_flight: Semaphore::new(config.max_in_flight),
        body_budget: BodyBudget::new(config.body_budget, config.peer_body_budget),
        decoding: body::DecodeBudget::new(MAX_BODY_BYTES),
        read_timeout: config.read_timeout,
        shutting_down: AtomicBool::new(false),
        log_reviews: config.log_reviews,
    });
    let shutdown = CancellationToken::new();
    let reloader = tokio::spawn(certificates.watch(config.reload_interval));
    let done = tokio::spawn(run(
        config,
        listener,
        admin_listener,
        TlsAcceptor::from(Arc::new(tls)),
        state,
        shutdown.clone(),
        reloader,
    ));
    tracing::info!(%addr, %admin_addr, "tokengate serving");
    Ok(Running { addr, admin_addr, shutdown, done })
}

async fn run<C: Cluster + Send + Sync + 'static>(
    config: ServerConfig,
    listener: TcpListener,
    admin_listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<AppState<C>>,
    shutdown: CancellationToken,
    reloader: tokio::task::JoinHandle<()>,
) {
    let admin_stop = CancellationToken::new();
    let admin = spawn_admin(admin_listener, routes::admin_router(state.clone()), admin_stop.clone());
    let stop_accepting = drain_on(shutdown, state.clone(), config.drain_delay);
    let connections = TaskTracker::new();
    let close_connections = CancellationToken::new();
    let connection = Connection {
        acceptor,
        router: routes::webhook_router(state.clone()),
        config: config.clone(),
        close: close_connections.clone(),
        metrics: state.metrics.clone(),
    };
    accept(listener, &stop_accepting, &connections, &connection).await;
    // ...then stop accepting, close idle keep-alive connections and let in-flight requests finish.
    close_connections.cancel();
    connections.close();
    if tokio::time::timeout(config.shutdown_timeout, connections.wait()).await.is_err() {
        tracing::warn!("shutdown timeout reached with requests still in flight");
    }
    reloader.abort();
    admin_stop.cancel();
    let _ = admin.await;
    tracing::info!("tokengate stopped");
}

/// Serves the admin port until `stop` is cancelled.
fn spawn_admin(listener: TcpListener, router: axum::Router, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let served = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
        if let Err(err) = served {
            tracing::error!(error = %err, "admin server failed");
        }
    })
}

/// On `shutdown` (SIGTERM): fails readiness at once and keeps serving for the drain delay, while
/// endpoints stop routing to this pod; the token returned is cancelled when that delay is over.
fn drain_on<C: Send + Sync + 'static>(
    shutdown: CancellationToken,
    state: Arc<AppState<C>>,
    drain_delay: Duration,
) -> CancellationToken {
    let stop_accepting = CancellationToken::new();
    let stop = stop_accepting.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        state.shutting_down.store(true, Ordering::SeqCst);
        tracing::info!(?drain_delay, "shutting down: readiness now fails; still serving");
        tokio::time::sleep(drain_delay).await;
        stop.cancel();
    });
    stop_accepting
}

/// Accepts connections until `stop` is cancelled, each served in a task of its own tracked by
/// `connections`; the listener is closed on return.
async fn accept(listener: TcpListener, stop: &CancellationToken, connections: &TaskTracker, connection: &Connection) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        connections.spawn(connection.clone().serve(stream, peer));
    }
}

/// One accepted TCP connection: TLS handshake (with a timeout), then HTTP until closed.
#[derive(Clone)]
struct Connection {
    acceptor: TlsAcceptor,
    router: axum::Router,
    config: ServerConfig,
    close: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Connection {
    async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        let Some(tls) = self.handshake(stream, peer).await else { return };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let activity = Arc::new(Activity::new());
        // HTTP/1.1 carries one request at a time, so one read clock per connection bounds the
        // time from a request's first byte to its last; hyper's own header timeout would also
        // run while the connection idles between requests, closing keep-alive connections the
        // API server still holds. HTTP/2 streams are bounded by the handler's body deadline.
        let deadlines = Arc::new(Deadlines::default());
        let io = TokioIo::new(Tracked {
            inner: tls,
            activity: activity.clone(),
            deadlines: deadlines.clone(),
            reads_requests: !h2,
        });
        let builder = http_builder(h2);
        let service = self.service(Peer::of(peer), (!h2).then(|| deadlines.clone()));
        let connection = builder.serve_connection(io, TowerToHyperService::new(service));
        tokio::pin!(connection);
        let idle_timeout = self.config.idle_timeout;
        let overdue = deadlines.overdue(self.config.read_timeout);
        tokio::pin!(overdue);
        let mut closing = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                    return;
                }
                overdue = overdue.as_mut() => return self.closed_overdue(overdue, peer),
                () = self.close.cancelled(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = activity.idle_for(idle_timeout), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }

    /// The TLS handshake, within the handshake timeout.
    async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let _ = stream.set_nodelay(true);
        match tokio::time::timeout(self.config.handshake_timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }

    /// The webhook routes for this connection: each request carries the client it came from and,
    /// over HTTP/1.1, the connection's read clock, which any answer stops.
    fn service(
        &self,
        peer: Peer,
        read_clock: Option<Arc<Deadlines>>,
    ) -> impl tower::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        let (on_request, on_response) = (read_clock.clone(), read_clock);
        self.router
            .clone()
            .map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(peer);
                if let Some(clock) = &on_request {
                    request.extensions_mut().insert(clock.clone());
                }
                request
            })
            .map_response(move |response| {
                if let Some(clock) = &on_response {
                    clock.request_read();
                }
                response
            })
    }

    /// Counts a connection closed by its read or write deadline.
    fn closed_overdue(&self, overdue: Overdue, peer: SocketAddr) {
        let (reason, what) = match overdue {
            Overdue::Read => (Rejection::ReadTimeout, "request not received"),
            Overdue::Write => (Rejection::WriteTimeout, "answer not taken"),
        };
        self.metrics.rejected(reason);
        let read_timeout = self.config.read_timeout;
        tracing::debug!(%peer, ?read_timeout, "{what} within the read timeout: connection closed");
    }
}

/// HTTP/1.1 or HTTP/2 (as ALPN chose) with hyper's timer; over HTTP/1.1 keep-alive, no header
/// timeout of hyper's own (the read clock does that), and a read buffer of [`MAX_BUF_BYTES`].
fn http_builder(h2: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Hyper's read buffer grows up to this while a body streams in (400 KiB by default):
    // per connection, on top of the budget. 64 KiB holds any request head the API server sends.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true).max_buf_size(MAX_BUF_BYTES);
    builder.http2().timer(TokioTimer::new());
    if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    }
}

/// When a connection last read or wrote, for the keep-alive idle timeout.
struct Activity {
    epoch: Instant,
    last_millis: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { epoch: Instant::now(), last_millis: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(millis, Ordering::Relaxed);
    }

    /// Completes once nothing was read or written for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.epoch + Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// An I/O stream that records activity, starts the read clock when a request's bytes arrive
/// and the write clock when the client does not take what is written.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
    deadlines: Arc<Deadlines>,
    /// Whether arriving bytes start the read clock (HTTP/1.1).
    reads_requests: bool,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
            if self.reads_requests {
                self.deadlines.bytes_arrived();
            }
        }
        result
    }
}

impl<T> Tracked<T> {
    fn wrote(&self, result: &Poll<std::io::Result<usize>>) {
        match result {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.touch(),
            Poll::Pending => self.deadlines.write_blocked(),
            Poll::Ready(_) => {}
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&result);
        result
    }

    /// Forwarded, so hyper queues large answers instead of copying them into its own buffer.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        match result {
            Poll::Ready(Ok(())) => self.deadlines.write_flushed(),
            Poll::Pending => self.deadlines.write_blocked(),
            Poll::Ready(Err(_)) => {}
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler works on unix");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
