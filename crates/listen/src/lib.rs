//! claas-listen: serves an axum [`Router`] on a [`TcpListener`] with production limits.
//!
//! `axum::serve` keeps every connection open for as long as the peer likes: it sets no header
//! timer, no idle timeout and no connection cap, so a few thousand silent sockets exhaust the
//! process's open files and every listener stops accepting. [`serve`] drives hyper's HTTP/1.1
//! connection itself (as `axum::serve` does, HTTP/1.1 only) and adds:
//!
//! - a **connection cap** ([`Limits::max_connections`]): at the cap the accept loop stops
//!   accepting, so new connections wait in the kernel's listen backlog until a connection
//!   closes (Go's `netutil.LimitListener` does the same). Waiting rather than refusing keeps
//!   short bursts lossless; the backlog bounds the queue.
//! - a **header read timeout** ([`Limits::header_read_timeout`], hyper's own timer): the client
//!   must send a complete request head within it. Hyper starts the timer as soon as the
//!   connection waits for a request, so it is also the keep-alive timeout between requests.
//! - an **idle timeout** ([`Limits::idle_timeout`]): a connection on which no byte moved for
//!   that long is closed, unless the server is working on a request. A handler computing for
//!   minutes or a stream that keeps sending is never cut; a client that stops sending a request
//!   body, or stops reading the response, is.
//! - **graceful shutdown**: when `shutdown` resolves, accepting stops, idle connections close,
//!   and [`serve`] returns once in-flight requests have finished.

pub mod body;
mod conn;

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use conn::{Activity, TrackedIo, TrackedService};

/// Per-listener limits. [`Limits::default`] follows common production servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections served at once; further connections wait to be accepted.
    /// Default 1024 (nginx's `worker_connections` order of magnitude, and far below the usual
    /// open-file limit even with two listeners in one process).
    pub max_connections: usize,
    /// Time a client has to send a complete request head, counted from when the connection
    /// starts waiting for a request (so it also bounds keep-alive gaps). Default 30 s, hyper's
    /// default (nginx's `client_header_timeout` is 60 s).
    pub header_read_timeout: Duration,
    /// A connection on which no byte was read or written for this long is closed, unless a
    /// request is in progress and neither waiting for its body nor blocked writing its
    /// response. Default 60 s, nginx's `client_body_timeout` and `send_timeout`.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` resolves, then stops
/// accepting, closes idle connections and returns once in-flight requests have finished
/// (as `axum::serve(..).with_graceful_shutdown(..)` does).
///
/// Fails only on invalid limits (`max_connections == 0` would never accept anything);
/// accept errors such as `EMFILE` are logged and retried after a pause, as `axum::serve` does.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    if limits.max_connections == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "max_connections must be at least 1",
        ));
    }
    warn_if_files_run_out_first(limits.max_connections);
    let mut shutdown = pin!(shutdown);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut at_cap = false;

    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                // Never closed; stop serving rather than spin if it ever were.
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        // Said once per time the cap fills, so an operator sees why connects are slow.
        let full = permits.available_permits() == 0;
        if full && !at_cap {
            tracing::warn!(
                "connection cap of {} reached; new connections wait until one closes",
                limits.max_connections
            );
        }
        at_cap = full;
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // EMFILE and the like: other files may be closed soon; retrying at
                        // once would spin on the same error.
                        tracing::error!("accept error: {e}");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(TrackedIo::new(stream, activity.clone()));
        let service = TrackedService::new(router.clone(), activity.clone());
        let conn = graceful.watch(builder.serve_connection(io, service));
        let idle_timeout = limits.idle_timeout;
        tokio::spawn(async move {
            // Held for the life of the connection: its slot under the cap.
            let _permit = permit;
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, "connection ended: {e}");
                },
                // Dropping the connection closes the socket; nothing the server is working on
                // is lost (see `Activity::idle`).
                () = activity.idle(idle_timeout) => {
                    tracing::debug!(%peer, "closed connection idle for {idle_timeout:?}");
                }
            }
        });
    }
    // Refuse new connections at once instead of leaving them queued during the drain.
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The cap only protects the process if the open-file limit is above it: with the common soft
/// limit of 1024, accepts would fail with `EMFILE` before the cap is reached (and model files,
/// the other listener and client sockets need descriptors too).
fn warn_if_files_run_out_first(max_connections: usize) {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0
            && (limit.rlim_cur as u128) < max_connections as u128 + 256
        {
            tracing::warn!(
                "open-file limit {} is too low for a connection cap of {max_connections}; \
                 raise it (ulimit -n) or lower the cap",
                limit.rlim_cur
            );
        }
    }
    #[cfg(not(unix))]
    let _ = max_connections;
}

/// Errors of one half-open connection, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
