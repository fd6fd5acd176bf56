//! One connection's activity, which decides when it is idle.
//!
//! Byte counts alone cannot tell a dead client from a busy server: a chat completion may
//! compute for minutes without writing a byte. So the connection tracks three things: I/O
//! progress (socket wrapper [`TrackedIo`]), requests in progress (service wrapper
//! [`TrackedService`], a request lasting until hyper drops its response body), and whether
//! the server is waiting on the client (a handler waiting for request body bytes, or a write
//! the socket will not take). The server is *working* while a request is in progress and it
//! waits on nothing from the client; otherwise the idle clock runs.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt;

/// Shared by a connection's socket wrapper, service and bodies, and its idle watcher.
pub(crate) struct Activity {
    state: Mutex<State>,
    /// Woken when the server stops working, so the watcher starts the idle clock.
    stopped_working: Notify,
}

struct State {
    /// Requests whose response body hyper still holds.
    in_flight: usize,
    /// Request bodies a handler is waiting on.
    body_waits: usize,
    /// The socket refused the last write (the client is not reading).
    write_blocked: bool,
    /// Last I/O progress, or the last time the server stopped working.
    last: Instant,
}

impl State {
    fn working(&self) -> bool {
        self.in_flight > 0 && self.body_waits == 0 && !self.write_blocked
    }
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            state: Mutex::new(State {
                in_flight: 0,
                body_waits: 0,
                write_blocked: false,
                last: Instant::now(),
            }),
            stopped_working: Notify::new(),
        }
    }

    /// Applies `change`; if the server stopped working, restarts the idle clock and wakes the
    /// watcher.
    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut s = self.state.lock();
        let was_working = s.working();
        change(&mut s);
        if was_working && !s.working() {
            s.last = Instant::now();
            drop(s);
            // notify_one keeps a permit if the watcher is between checks, so no wake is lost.
            self.stopped_working.notify_one();
        }
    }

    fn progressed(&self) {
        self.state.lock().last = Instant::now();
    }

    /// Resolves once the connection has been idle for `timeout`: the server was not working
    /// and no byte moved. Until then, closing it could cut a request the server is serving.
    pub(crate) async fn idle(&self, timeout: Duration) {
        loop {
            let deadline = {
                let s = self.state.lock();
                (!s.working()).then(|| s.last + timeout)
            };
            match deadline {
                None => self.stopped_working.notified().await,
                Some(d) if d <= Instant::now() => return,
                // Re-checked on waking: I/O may have moved `last` on.
                Some(d) => tokio::time::sleep_until(d).await,
            }
        }
    }
}

/// The socket, noting every byte read or written and writes the client does not take.
pub(crate) struct TrackedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl TrackedIo {
    pub(crate) fn new(inner: TcpStream, activity: Arc<Activity>) -> Self {
        TrackedIo { inner, activity }
    }

    fn on_write(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.update(|s| {
                s.write_blocked = false;
                s.last = Instant::now();
            }),
            Poll::Pending => self.activity.update(|s| s.write_blocked = true),
            _ => {}
        }
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.progressed();
        }
        r
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as hyper's service, counting each request as in progress until hyper drops its
/// response body (sent, or the connection gone).
#[derive(Clone)]
pub(crate) struct TrackedService {
    router: Router,
    activity: Arc<Activity>,
}

impl TrackedService {
    pub(crate) fn new(router: Router, activity: Arc<Activity>) -> Self {
        TrackedService { router, activity }
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for TrackedService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let guard = InFlight::start(self.activity.clone());
        let activity = self.activity.clone();
        let req: Request = req.map(|inner| {
            Body::new(RequestBody {
                inner,
                activity,
                waiting: false,
            })
        });
        let router = self.router.clone();
        Box::pin(async move {
            let response = router.oneshot(req).await?;
            Ok(response.map(|inner| {
                Body::new(ResponseBody {
                    inner,
                    _in_flight: guard,
                })
            }))
        })
    }
}

/// One request in progress; dropped with its response body (or its handler, if the
/// connection goes first).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.update(|s| s.in_flight += 1);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .update(|s| s.in_flight = s.in_flight.saturating_sub(1));
    }
}

/// A request body that marks the connection as waiting on the client while a handler waits
/// for bytes, so a client that stops mid-body is closed by the idle timeout.
struct RequestBody {
    inner: Incoming,
    activity: Arc<Activity>,
    waiting: bool,
}

impl RequestBody {
    fn set_waiting(&mut self, waiting: bool) {
        if self.waiting != waiting {
            self.waiting = waiting;
            self.activity.update(|s| {
                if waiting {
                    s.body_waits += 1;
                } else {
                    s.body_waits = s.body_waits.saturating_sub(1);
                }
            });
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        self.set_waiting(r.is_pending());
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.set_waiting(false);
    }
}

/// A response body carrying its request's [`InFlight`] mark.
struct ResponseBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
