//! A forward-authentication check sent to the authentication service:
//! one request without a body on a new connection, answered by its status
//! and fields (the body is not read). Bounded by `--forward-auth-timeout`
//! from connect to response head.

use std::net::SocketAddr;
use std::time::Duration;

use http::response::Parts;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The service's answer, or `None` (refused, malformed, or later than
/// `timeout`).
pub(crate) async fn ask(
    addr: SocketAddr,
    request: http::Request<()>,
    timeout: Duration,
) -> Option<Parts> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| tracing::debug!(%addr, error = %e, "forward-auth connect failed"))
            .ok()?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        // The connection's driver ends with the exchange (this future
        // drops it with the sender).
        let driven = async move {
            let _ = conn.await;
        };
        let (parts, ()) = request.into_parts();
        let request = http::Request::from_parts(parts, Empty::<bytes::Bytes>::new());
        let answer = sender.send_request(request);
        tokio::pin!(driven, answer);
        let answer = tokio::select! {
            biased;
            answer = &mut answer => answer,
            // The service closed after answering: the answer is ready.
            () = &mut driven => answer.await,
        };
        answer
            .map_err(|e| tracing::debug!(%addr, error = %e, "forward-auth check failed"))
            .ok()
            .map(|res| res.into_parts().0)
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}
