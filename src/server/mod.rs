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
pub use body::BodyBudget;
use deadline::{Deadlines, Overdue};
pub use routes::{AppState, MAX_BODY_BYTES};
use tls::{CertificateFiles, CertificateStore, TlsError};

/// The most an HTTP/1.1 connection buffers of what it reads, beyond the budgeted bodies.
const MAX_BUF_BYTES: usize = 64 * 1024;

/// The default byte budget of buffered request bodies: four bodies of the largest size.
pub const DEFAULT_BODY_BUDGET: usize = 4 * MAX_BODY_BYTES;

/// Everything `serve` is configured with.
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
    /// a body that does not fit is refused at once with 503. At least [`MAX_BODY_BYTES`].
    pub body_budget: usize,
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

impl ServerConfig {
    /// Defaults for everything but the addresses and files.
    pub fn new(certificates: CertificateFiles) -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            certificates,
            client_ca: None,
            http2: false,
            max_in_flight: 512,
            body_budget: DEFAULT_BODY_BUDGET,
            reload_interval: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            drain_delay: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(20),
            log_reviews: true,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The certificate, key or client CA is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The body budget cannot hold even one body of the largest size.
    #[error("the body budget ({budget} bytes) must be at least the largest body ({MAX_BODY_BYTES} bytes)")]
    BodyBudget { budget: usize },
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
    if config.body_budget < MAX_BODY_BYTES {
        return Err(ServeError::BodyBudget { budget: config.body_budget });
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
        body_budget: BodyBudget::new(config.body_budget),
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
    let admin = {
        let stop = admin_stop.clone();
        let router = routes::admin_router(state.clone());
        tokio::spawn(async move {
            let served = axum::serve(admin_listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
            if let Err(err) = served {
                tracing::error!(error = %err, "admin server failed");
            }
        })
    };

    // SIGTERM: fail readiness at once and keep serving for the drain delay, while endpoints
    // stop routing to this pod...
    let stop_accepting = CancellationToken::new();
    tokio::spawn({
        let (state, stop_accepting, drain_delay) = (state.clone(), stop_accepting.clone(), config.drain_delay);
        async move {
            shutdown.cancelled().await;
            state.shutting_down.store(true, Ordering::SeqCst);
            tracing::info!(?drain_delay, "shutting down: readiness now fails; still serving");
            tokio::time::sleep(drain_delay).await;
            stop_accepting.cancel();
        }
    });
    let connections = TaskTracker::new();
    let close_connections = CancellationToken::new();
    let router = routes::webhook_router(state.clone());
    loop {
        let (stream, peer) = tokio::select! {
            () = stop_accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let connection = Connection {
            acceptor: acceptor.clone(),
            router: router.clone(),
            config: config.clone(),
            close: close_connections.clone(),
            metrics: state.metrics.clone(),
        };
        connections.spawn(connection.serve(stream, peer));
    }
    // ...then stop accepting, close idle keep-alive connections and let in-flight requests finish.
    drop(listener);
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

/// One accepted TCP connection: TLS handshake (with a timeout), then HTTP until closed.
struct Connection {
    acceptor: TlsAcceptor,
    router: axum::Router,
    config: ServerConfig,
    close: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Connection {
    async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let tls = match tokio::time::timeout(self.config.handshake_timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let activity = Arc::new(Activity::new());
        // HTTP/1.1 carries one request at a time, so one read clock per connection bounds the
        // time from a request's first byte to its last; hyper's own header timeout would also
        // run while the connection idles between requests, closing keep-alive connections the
        // API server still holds. HTTP/2 streams are bounded by the handler's body deadline.
        let deadlines = Arc::new(Deadlines::default());
        let read_clock = (!h2).then(|| deadlines.clone());
        let io = TokioIo::new(Tracked {
            inner: tls,
            activity: activity.clone(),
            deadlines: deadlines.clone(),
            reads_requests: !h2,
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // Hyper's read buffer grows up to this while a body streams in (400 KiB by default):
        // per connection, on top of the budget. 64 KiB holds any request head the API server sends.
        builder.http1().timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true).max_buf_size(MAX_BUF_BYTES);
        builder.http2().timer(TokioTimer::new());
        let builder = if h2 { builder.http2_only() } else { builder.http1_only() };
        let service = {
            let (on_request, on_response) = (read_clock.clone(), read_clock);
            self.router
                .map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
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
        };
        let connection = builder.serve_connection(io, TowerToHyperService::new(service));
        tokio::pin!(connection);
        let idle_timeout = self.config.idle_timeout;
        let read_timeout = self.config.read_timeout;
        let overdue = deadlines.overdue(read_timeout);
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
                overdue = overdue.as_mut() => {
                    let (reason, what) = match overdue {
                        Overdue::Read => (Rejection::ReadTimeout, "request not received"),
                        Overdue::Write => (Rejection::WriteTimeout, "answer not taken"),
                    };
                    self.metrics.rejected(reason);
                    tracing::debug!(%peer, ?read_timeout, "{what} within the read timeout: connection closed");
                    return;
                }
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
