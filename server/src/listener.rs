//! The connection layer: our own accept loop in place of `axum::serve`, so
//! that what a client can make the server hold is bounded whatever it does.
//!
//! * **Open connections are capped** ([`ListenerConfig::max_connections`],
//!   default 4096, never more than the file-descriptor limit minus
//!   [`FD_RESERVE`]). A slot is taken *before* `accept`: when all are in
//!   use the loop stops accepting and new connections wait in the kernel's
//!   listen backlog ([`LISTEN_BACKLOG`]), holding no descriptor of ours. They are served, in
//!   order, as soon as a slot frees, which the timeouts below guarantee
//!   within seconds for slow or idle clients. Closing them at once instead
//!   would cost an accept and a close each (a busy loop under a flood) and
//!   would make `GET /v1/health` probes fail outright instead of waiting.
//! * **Timeouts.** The TLS handshake must finish within
//!   [`ListenerConfig::tls_handshake_timeout`] (run in the connection's own
//!   task, never in the accept loop). A request's header must arrive within
//!   [`ListenerConfig::header_read_timeout`]; hyper starts that timer
//!   whenever it waits for a request, so it is also the idle keep-alive
//!   timeout. A connection that moves no byte either way for
//!   [`ListenerConfig::stall_timeout`] (a body that stopped coming) is
//!   closed, and no connection lives longer than
//!   [`ListenerConfig::max_connection_lifetime`].
//! * **Accept errors** (`EMFILE`, ...) never spin: the loop sleeps
//!   [`ACCEPT_BACKOFF`] and logs at most once a second, with a count.
//! * **Graceful shutdown**: when the shutdown future completes the loop
//!   stops accepting, idle connections close, requests in flight finish
//!   (for at most [`ListenerConfig::shutdown_grace`]).
//!
//! Only HTTP/1.1 is served: tablets (ureq) speak it, and HTTP/2 would add
//! per-stream resources to bound for no client that uses them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// Descriptors kept free for everything but client connections: the
/// database and its WAL, the listener, logs, the runtime's own.
pub const FD_RESERVE: u64 = 64;

/// The listen backlog: connections the kernel completes and holds for us
/// while every slot is in use or the accept loop catches up (std's default
/// is 128; beyond the backlog, clients retry their SYN after 1 s, 3 s, ...,
/// or see their connection reset). 4096: every commune office of the
/// country (1,633) connecting in the same instant fits, and it is Linux's
/// default cap (`net.core.somaxconn`), which lowers it silently if set
/// lower.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `listen` (`host:port`; the first address it resolves to) with
/// [`LISTEN_BACKLOG`].
pub async fn bind(listen: &str) -> io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(listen)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the address resolves to nothing"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How long the accept loop waits after an accept error before the next.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The limits of the connection layer. [`Default`] is what `crvs-server
/// serve` uses.
#[derive(Clone)]
pub struct ListenerConfig {
    /// TLS (rustls) when set; plain HTTP otherwise.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Open connections at most (further capped by the descriptor limit).
    pub max_connections: usize,
    /// A request's header must arrive within this; also the idle
    /// keep-alive timeout.
    pub header_read_timeout: Duration,
    /// The TLS handshake must finish within this.
    pub tls_handshake_timeout: Duration,
    /// A connection that moves no byte either way for this long is closed.
    pub stall_timeout: Duration,
    /// No connection lives longer than this (tablets on 2G upload
    /// slowly: generous, but bounded).
    pub max_connection_lifetime: Duration,
    /// On shutdown, requests in flight get this long to finish.
    pub shutdown_grace: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            tls: None,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(120),
            max_connection_lifetime: Duration::from_secs(15 * 60),
            shutdown_grace: Duration::from_secs(60),
        }
    }
}

impl std::fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("tls", &self.tls.is_some())
            .field("max_connections", &self.max_connections)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("tls_handshake_timeout", &self.tls_handshake_timeout)
            .field("stall_timeout", &self.stall_timeout)
            .field("max_connection_lifetime", &self.max_connection_lifetime)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish()
    }
}

/// Raises the soft limit on open files to the hard limit (unix) and
/// returns the soft limit now in force; `None` where there is none to read.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                // May fail (macOS caps at OPEN_MAX): keep the current limit.
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim = raised;
                }
            }
        }
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Some(u64::try_from(lim.rlim_cur).unwrap_or(u64::MAX))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The current soft limit on open files (unix).
fn fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Some(u64::try_from(lim.rlim_cur).unwrap_or(u64::MAX))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// `requested`, capped so that connections never exhaust the descriptors.
pub fn effective_max_connections(requested: usize) -> usize {
    let by_fds = fd_limit().map_or(usize::MAX, |l| {
        usize::try_from(l.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX)
    });
    requested.min(by_fds).max(1)
}

/// Logs a recurring condition at most once per second, with how many
/// times it happened since the last line.
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new() -> Self {
        RateLimitedLog {
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log now; `Some(n)`: `n` occurrences were not logged.
    fn tick(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Errors of one pending connection (it was reset before we took it):
/// accepting the next one is fine at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    )
}

/// Serves `router` on `listener` with the limits of `config` until
/// `shutdown` completes, then stops accepting and lets the requests in
/// flight finish (within [`ListenerConfig::shutdown_grace`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ListenerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let cap = effective_max_connections(config.max_connections);
    tracing::info!(
        max_connections = cap,
        tls = config.tls.is_some(),
        header_read_timeout_s = config.header_read_timeout.as_secs(),
        max_connection_lifetime_s = config.max_connection_lifetime.as_secs(),
        "accepting connections"
    );
    let slots = Arc::new(Semaphore::new(cap));
    let graceful = GracefulShutdown::new();
    let acceptor = config.tls.clone().map(TlsAcceptor::from);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    let limits = Arc::new(Limits {
        http,
        tls_handshake_timeout: config.tls_handshake_timeout,
        stall_timeout: config.stall_timeout,
        max_connection_lifetime: config.max_connection_lifetime,
    });
    let mut accept_errors = RateLimitedLog::new();
    let mut full = RateLimitedLog::new();
    tokio::pin!(shutdown);
    loop {
        if slots.available_permits() == 0
            && let Some(n) = full.tick()
        {
            tracing::warn!(
                max_connections = cap,
                since_last = n,
                "connection limit reached: new connections wait in the listen backlog"
            );
        }
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, _peer)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    if let Some(n) = accept_errors.tick() {
                        tracing::warn!(error = %e, since_last = n, "accept failed; backing off");
                    }
                    drop(permit);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let watcher = graceful.watcher();
        let limits = Arc::clone(&limits);
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _slot = permit;
            connection(stream, acceptor, router, watcher, &limits).await;
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        open_connections = open,
        "stopped accepting; finishing the requests in flight"
    );
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight at the end of the shutdown grace period were cut");
    }
    Ok(())
}

struct Limits {
    http: http1::Builder,
    tls_handshake_timeout: Duration,
    stall_timeout: Duration,
    max_connection_lifetime: Duration,
}

/// One connection, in its own task: TLS handshake (bounded), then HTTP/1.1
/// under the stall and lifetime limits.
async fn connection(
    stream: TcpStream,
    acceptor: Option<TlsAcceptor>,
    router: Router,
    watcher: Watcher,
    limits: &Limits,
) {
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let io = Tracked {
        inner: stream,
        activity: Arc::clone(&activity),
    };
    match acceptor {
        None => drive(TokioIo::new(io), router, watcher, limits, &activity).await,
        Some(acceptor) => {
            match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(io)).await {
                Ok(Ok(tls)) => drive(TokioIo::new(tls), router, watcher, limits, &activity).await,
                // A client that does not trust us, or a port scanner: no
                // request was made, so nothing worth a warning.
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

async fn drive<I>(io: I, router: Router, watcher: Watcher, limits: &Limits, activity: &Activity)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = watcher.watch(limits.http.serve_connection(io, TowerToHyperService::new(router)));
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(limits.max_connection_lifetime);
    tokio::pin!(lifetime);
    loop {
        let idle = activity.idle_for();
        if idle >= limits.stall_timeout {
            tracing::debug!("connection closed: no bytes moved within the stall timeout");
            return;
        }
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    // Header timeouts, resets, malformed requests.
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut lifetime => {
                tracing::debug!("connection closed: lifetime cap reached");
                return;
            }
            () = tokio::time::sleep(limits.stall_timeout - idle) => {}
        }
    }
}

/// When a connection last moved a byte.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// A TCP stream that records when it last moved a byte.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Loads a certificate chain and its private key (PEM: PKCS#8, SEC1 or
/// RSA) into a rustls server configuration (ring; TLS 1.2 and 1.3;
/// HTTP/1.1 by ALPN). Errors name the file and the problem, never key
/// material.
pub fn tls_config(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the certificate chain {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (expected the server's certificate chain)",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        format!(
            "cannot read a PEM private key (PKCS#8, SEC1 or RSA) from {}: {e}",
            key_file.display()
        )
    })?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup failed: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("the certificate and the key do not make a TLS identity: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_never_exceeds_the_descriptor_limit() {
        let limit = fd_limit().expect("a descriptor limit on unix");
        let cap = effective_max_connections(usize::MAX);
        assert!((cap as u64) <= limit.saturating_sub(FD_RESERVE).max(1));
        assert_eq!(effective_max_connections(3), 3);
        assert_eq!(effective_max_connections(0), 1);
    }

    #[test]
    fn a_recurring_error_is_logged_at_most_once_a_second() {
        let mut log = RateLimitedLog::new();
        assert_eq!(log.tick(), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.tick(), None);
        }
        log.last = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(log.tick(), Some(1000));
    }
}
