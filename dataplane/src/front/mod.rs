//! The front ends: how requests arrive. Each reads requests off its
//! connections, runs them through `dispatch`, drives the exchange of a
//! proxy route with `proxy`, and writes the answer.
//!
//! - [`h1`]: Pier's own HTTP/1.1 engine on plain connections (no buffer
//!   while idle, `sendfile` for files);
//! - [`hyper`]: HTTP/2 (h2c, and ALPN h2), and HTTP/1.1 over TLS;
//! - [`tls`]: the rustls handshake in front of `hyper`.

pub(crate) mod h1;
pub(crate) mod hyper;
pub(crate) mod tls;

#[cfg(test)]
mod clock_tests;
