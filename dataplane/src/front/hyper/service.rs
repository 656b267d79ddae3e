//! The hyper service of one connection: the dispatch phases, then for a
//! proxy route the exchange of [`super::proxy`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{Activity, Body};
use crate::dispatch::{Dispatch, Shared};
use crate::files;
use crate::http::forward::Peer;

/// The hyper service of one connection (HTTP/2, or HTTP/1.1 over TLS).
#[derive(Clone, Debug)]
pub(crate) struct Service {
    pub(crate) shared: Arc<Shared>,
    pub(crate) activity: Arc<Activity>,
    /// The client's address, for proxy routes (formatted once per
    /// connection).
    pub(crate) peer: Option<Arc<Peer>>,
    /// The connection is TLS.
    pub(crate) secure: bool,
}

impl Service {
    /// A service for a new connection, with the activity its supervisor
    /// watches.
    pub(crate) fn new(
        shared: &Arc<Shared>,
        peer: Option<std::net::SocketAddr>,
        secure: bool,
    ) -> (Self, Arc<Activity>) {
        let activity = Arc::new(Activity::new());
        let service = Self {
            shared: Arc::clone(shared),
            activity: Arc::clone(&activity),
            peer: peer.map(|a| Arc::new(Peer::new(a))),
            secure,
        };
        (service, activity)
    }
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        match self
            .shared
            .dispatch(&req, Some(&self.activity), self.secure, &|| {
                self.peer.as_ref().map(|p| p.addr.ip())
            }) {
            Dispatch::Respond(res) => Answer::Ready(Some(res)),
            Dispatch::Proxy(target) => Answer::Proxy(Box::pin(super::proxy::forward(
                Arc::clone(&self.shared.ctx),
                req,
                target,
                self.peer.clone(),
                Arc::clone(&self.activity),
            ))),
            Dispatch::Check(pending) => {
                let (shared, peer) = (Arc::clone(&self.shared), self.peer.clone());
                let activity = Arc::clone(&self.activity);
                Answer::Proxy(Box::pin(async move {
                    let mut req = req;
                    match shared.check(pending, &mut req).await {
                        Dispatch::Respond(res) => res,
                        Dispatch::Proxy(target) => {
                            let ctx = Arc::clone(&shared.ctx);
                            super::proxy::forward(ctx, req, target, peer, activity).await
                        }
                        Dispatch::Check(_) => files::status(StatusCode::INTERNAL_SERVER_ERROR),
                    }
                }))
            }
        }
    }
}

/// An HTTP/2 answer: ready at once (files: no allocation for the future),
/// or a proxied exchange. `Ready` is the hot static path, so it stays
/// unboxed, as in [`Dispatch`].
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answer {
    Ready(Option<Response<Body>>),
    Proxy(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

impl Future for Answer {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            // Polled once: hyper does not poll a finished future again.
            Self::Ready(res) => Poll::Ready(Ok(res
                .take()
                .unwrap_or_else(|| files::status(StatusCode::INTERNAL_SERVER_ERROR)))),
            Self::Proxy(future) => future.as_mut().poll(cx).map(Ok),
        }
    }
}
