//! Every ingress-nginx annotation Pier knows and how it treats each: the
//! one table the parser (`annotations`) and the README's support table
//! (checked by a test) follow.

use Support::{Ignored, Refused, Supported};

/// The prefix of every ingress-nginx annotation.
pub const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// How Pier treats an annotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Read, with the meaning ingress-nginx gives it.
    Supported,
    /// Not supported: reported in an Event, the Ingress served without it.
    Ignored,
    /// Not supported, and it restricts access: the Ingress is refused.
    Refused,
}

/// Every ingress-nginx annotation Pier knows, with how it treats it and a
/// note for the README. Any other `nginx.ingress.kubernetes.io/` name is
/// `Ignored` (reported as unknown), and any `*-snippet` is refused.
pub const TABLE: &[(&str, Support, &str)] = &[
    ("app-root", Supported, "`/` answers 302 to the path"),
    (
        "backend-protocol",
        Supported,
        "`HTTP`, `HTTPS` (verified: needs `proxy-ssl-secret`); `GRPC`, `GRPCS`, `FCGI`, `AUTO_HTTP` refuse the Ingress",
    ),
    (
        "canary",
        Supported,
        "merged into the main Ingress of the same host and path",
    ),
    (
        "canary-by-header",
        Supported,
        "the header set to `always` (or `canary-by-header-value`) goes to the canary",
    ),
    (
        "canary-by-header-value",
        Supported,
        "the value that selects the canary",
    ),
    (
        "canary-weight",
        Supported,
        "share of requests for the canary",
    ),
    ("canary-weight-total", Supported, "default 100"),
    (
        "canary-by-cookie",
        Supported,
        "the cookie set to `always` goes to the canary (after `canary-by-header`)",
    ),
    (
        "canary-by-header-pattern",
        Supported,
        "a regular expression searched for in the header's value, when `canary-by-header-value` is absent",
    ),
    ("cors-allow-credentials", Supported, "default `true`"),
    ("cors-allow-headers", Supported, ""),
    ("cors-allow-methods", Supported, ""),
    (
        "cors-allow-origin",
        Supported,
        "comma-separated; `https://*.example.com` wildcards",
    ),
    ("cors-expose-headers", Supported, ""),
    ("cors-max-age", Supported, "seconds, default 1728000"),
    (
        "enable-cors",
        Supported,
        "preflights answered by the dataplane",
    ),
    ("denylist-source-range", Supported, "403 for these networks"),
    (
        "whitelist-source-range",
        Supported,
        "403 for other networks",
    ),
    (
        "allowlist-source-range",
        Supported,
        "the newer name of `whitelist-source-range`",
    ),
    (
        "force-ssl-redirect",
        Supported,
        "308 to HTTPS; needs the Ingress's TLS on Pier",
    ),
    (
        "ssl-redirect",
        Supported,
        "default `true` for hosts with TLS",
    ),
    (
        "load-balance",
        Supported,
        "`round_robin`; `ewma` as least-request",
    ),
    (
        "permanent-redirect",
        Supported,
        "301 (or `permanent-redirect-code`) to the URL",
    ),
    ("permanent-redirect-code", Supported, ""),
    (
        "temporal-redirect",
        Supported,
        "302 (or `temporal-redirect-code`) to the URL",
    ),
    ("temporal-redirect-code", Supported, ""),
    (
        "proxy-body-size",
        Supported,
        "413 beyond; default `1m` as in ingress-nginx; `0` is unlimited",
    ),
    (
        "proxy-buffering",
        Supported,
        "`off` streams; `on` (and absent) is Pier's hybrid buffering",
    ),
    (
        "proxy-request-buffering",
        Supported,
        "`off` streams request bodies",
    ),
    ("proxy-connect-timeout", Supported, "seconds"),
    (
        "proxy-read-timeout",
        Supported,
        "seconds: the wait for the response head and the longest silence",
    ),
    (
        "proxy-send-timeout",
        Supported,
        "seconds: the longest silence, with `proxy-read-timeout`",
    ),
    (
        "proxy-next-upstream-tries",
        Supported,
        "tries in all, first included",
    ),
    (
        "proxy-ssl-secret",
        Supported,
        "`namespace/name` whose `ca.crt` verifies HTTPS backends",
    ),
    (
        "proxy-ssl-name",
        Supported,
        "the name verified in backend certificates",
    ),
    (
        "proxy-ssl-verify",
        Supported,
        "Pier always verifies; `off` is reported",
    ),
    (
        "rewrite-target",
        Supported,
        "nginx `rewrite` with `$1`…`$9`; makes the paths regular expressions",
    ),
    (
        "use-regex",
        Supported,
        "paths are case-insensitive regular expressions anchored at the start",
    ),
    (
        "upstream-hash-by",
        Supported,
        "`$request_uri`, `$uri`, `$remote_addr`, `$http_NAME`, `$cookie_NAME`",
    ),
    ("upstream-vhost", Supported, "the `Host` sent upstream"),
    (
        "affinity",
        Supported,
        "`cookie`: a client keeps its endpoint while it serves",
    ),
    (
        "affinity-mode",
        Supported,
        "`persistent`; `balanced` is taken as `persistent`",
    ),
    ("session-cookie-name", Supported, "default `INGRESSCOOKIE`"),
    (
        "session-cookie-path",
        Supported,
        "default the Ingress path; `/` with `use-regex`",
    ),
    ("session-cookie-max-age", Supported, "seconds"),
    (
        "session-cookie-expires",
        Supported,
        "seconds, sent as `Max-Age` when `session-cookie-max-age` is absent",
    ),
    (
        "session-cookie-samesite",
        Supported,
        "`None` also sets `Secure`, as browsers require",
    ),
    ("session-cookie-secure", Supported, ""),
    (
        "session-cookie-change-on-failure",
        Supported,
        "always: a session whose endpoint fails or goes gets another and a new cookie",
    ),
    (
        "client-body-buffer-size",
        Ignored,
        "Pier's buffering sizes are per route (`buffering.memory`)",
    ),
    ("custom-http-errors", Ignored, ""),
    (
        "default-backend",
        Ignored,
        "use the Ingress's `defaultBackend`",
    ),
    ("enable-access-log", Ignored, ""),
    ("from-to-www-redirect", Ignored, ""),
    ("mirror-target", Ignored, ""),
    ("mirror-request-body", Ignored, ""),
    ("proxy-buffer-size", Ignored, "see `buffering.memory`"),
    ("proxy-buffers-number", Ignored, ""),
    ("proxy-cookie-domain", Ignored, ""),
    ("proxy-cookie-path", Ignored, ""),
    (
        "proxy-http-version",
        Supported,
        "`1.1`, which Pier speaks to backends; `1.0` is reported",
    ),
    ("proxy-max-temp-file-size", Ignored, "see `buffering.disk`"),
    (
        "proxy-next-upstream",
        Ignored,
        "Pier retries connection failures",
    ),
    ("proxy-next-upstream-timeout", Ignored, ""),
    ("proxy-redirect-from", Ignored, ""),
    ("proxy-redirect-to", Ignored, ""),
    ("server-alias", Ignored, ""),
    (
        "service-upstream",
        Ignored,
        "Pier balances across endpoints",
    ),
    ("ssl-passthrough", Ignored, ""),
    (
        "x-forwarded-prefix",
        Supported,
        "sent upstream as `X-Forwarded-Prefix`",
    ),
    (
        "auth-url",
        Supported,
        "`http://` to a Service (`NAME.NAMESPACE.svc`) or an IP address; 2xx admits, 401/403 are passed on, else 500",
    ),
    (
        "auth-signin",
        Supported,
        "a 401 redirects there with `rd=` the original URL",
    ),
    ("auth-method", Supported, ""),
    (
        "auth-response-headers",
        Supported,
        "copied onto the request; the client's own are dropped",
    ),
    (
        "auth-request-redirect",
        Ignored,
        "Pier sends the request's URL in `X-Auth-Request-Redirect`",
    ),
    (
        "auth-type",
        Supported,
        "`basic` (401 without a user's password); `digest` refuses the Ingress",
    ),
    (
        "auth-secret",
        Supported,
        "the Secret of the users, in the Ingress's namespace",
    ),
    (
        "auth-secret-type",
        Supported,
        "`auth-file` (htpasswd lines under `auth`) or `auth-map` (a key per user); bcrypt, `$apr1$` or `{SHA}` hashes",
    ),
    ("auth-realm", Supported, ""),
    (
        "auth-tls-secret",
        Refused,
        "client certificates are not built yet",
    ),
    ("auth-tls-verify-client", Refused, ""),
    ("auth-tls-verify-depth", Refused, ""),
    ("auth-tls-pass-certificate-to-upstream", Refused, ""),
    ("limit-rps", Refused, "rate limits are not built yet"),
    ("limit-rpm", Refused, ""),
    ("limit-connections", Refused, ""),
    ("limit-burst-multiplier", Refused, ""),
    ("limit-whitelist", Refused, ""),
    ("limit-allowlist", Refused, ""),
    ("global-rate-limit", Refused, ""),
    ("enable-modsecurity", Refused, ""),
    ("enable-owasp-core-rules", Refused, ""),
    ("satisfy", Refused, ""),
];

/// How an Ingress's annotations are treated: the name (without the
/// prefix) and its support. `*-snippet` names are refused.
pub fn support(name: &str) -> Option<Support> {
    if name.ends_with("-snippet") {
        return Some(Refused);
    }
    TABLE
        .iter()
        .find(|(known, ..)| *known == name)
        .map(|(_, support, _)| *support)
}
