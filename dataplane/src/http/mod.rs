//! HTTP/1.1 as the dataplane speaks it, pure: no sockets, no clocks but
//! the `Date` cache. Request heads ([`head`]), chunked framing
//! ([`chunked`]), the client's response heads ([`response`]), a backend's
//! response heads ([`upstream`]), path normalisation ([`path`]),
//! forwarding rules ([`forward`]) and header edits ([`edits`]).

pub(crate) mod chunked;
pub(crate) mod edits;
pub(crate) mod forward;
pub(crate) mod head;
pub(crate) mod path;
pub(crate) mod response;
pub(crate) mod upstream;
