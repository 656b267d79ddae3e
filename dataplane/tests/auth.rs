//! Basic authentication over real sockets, from the same manifests a
//! cluster takes: a Secret of htpasswd lines protecting a StaticRoute and
//! a ProxyRoute, over HTTP/1.1 and HTTP/2, the hashes kept out of
//! `/snapshot`.

mod support;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use support::{Running, named_backend, request, send, write};

/// `htpasswd -nbm bob hunter2` and `htpasswd -nbB -C 5 alice 's3cret!'`.
const USERS: &str = "apiVersion: v1
kind: Secret
metadata: {name: users, namespace: default}
stringData:
  auth: |
    bob:$apr1$cNOAwpSu$MtBlYKfXHmZtzh7a7jGe1.
    alice:$2y$05$zFZLl/LUbKpPWxd3/Vwbv.S6Yd/JV6j8QLlvKB9l016BkABUpcjx6
";

fn basic(user_password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(user_password);
    format!("Authorization: Basic {token}")
}

#[test]
fn files_and_backends_ask_for_a_users_password() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "secret.txt", b"for staff");
    let files = format!(
        "apiVersion: pier.dev/v1alpha1\nkind: StaticRoute\nmetadata: {{name: files, namespace: default}}\nspec: {{hosts: [files.test], root: {}, basicAuth: {{secretName: users, realm: Staff}}}}\n",
        dir.path().display()
    );
    let app = format!(
        "apiVersion: pier.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {{name: app, namespace: default}}\nspec: {{hosts: [app.test], backends: [{{address: \"{}\"}}], basicAuth: {{secretName: users}}}}\n",
        named_backend("app")
    );
    let pier = Running::start(
        &[
            ("users.yaml", USERS),
            ("files.yaml", &files),
            ("app.yaml", &app),
        ],
        &[],
    );
    let ask =
        |host: &str, field: Option<&str>| {
            let req = request("GET", "/secret.txt", &field.into_iter().collect::<Vec<_>>())
                .replacen("Host: test", &format!("Host: {host}"), 1);
            send(&mut pier.connect(), &req)
        };

    let res = ask("files.test", None);
    assert_eq!(res.status, 401);
    assert_eq!(
        res.header("www-authenticate"),
        Some("Basic realm=\"Staff\"")
    );
    let res = ask("files.test", Some(&basic("bob:hunter2")));
    assert_eq!((res.status, res.text().as_str()), (200, "for staff"));
    let res = ask("files.test", Some(&basic("alice:s3cret!")));
    assert_eq!(res.status, 200);
    for wrong in ["bob:hunter3", "alice:hunter2", "mallory:x"] {
        assert_eq!(
            ask("files.test", Some(&basic(wrong))).status,
            401,
            "{wrong}"
        );
    }

    let res = ask("app.test", None);
    assert_eq!(res.status, 401);
    assert_eq!(
        res.header("www-authenticate"),
        Some("Basic realm=\"Authentication Required\"")
    );
    let res = ask("app.test", Some(&basic("bob:hunter2")));
    assert_eq!(
        (res.status, res.text().as_str()),
        (200, "app /secret.txt -")
    );

    // HTTP/2 runs the same filter.
    let field = basic("alice:s3cret!");
    let value = field.trim_start_matches("Authorization: ").to_owned();
    support::with_h2(&pier, |mut sender| async move {
        for (auth, status) in [(None, 401), (Some(value.as_str()), 200)] {
            let mut req = http::Request::builder().uri("http://files.test/secret.txt");
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            let req = req.body(Full::new(Bytes::new())).expect("request");
            let res = sender.send_request(req).await.expect("response");
            assert_eq!(res.status(), status);
        }
    });

    // The hashes stay out of what the admin server shows.
    let shown = pier.admin("/snapshot").text();
    assert!(
        shown.contains("\"bob\"") && shown.contains("<redacted>"),
        "{shown}"
    );
    assert!(
        !shown.contains("$apr1$") && !shown.contains("$2y$"),
        "{shown}"
    );
    let metrics = pier.admin("/metrics").text();
    assert!(metrics.contains("pier_dataplane_basic_auth_refused_total"));
}

#[test]
fn a_route_whose_users_cannot_be_read_is_not_served_open() {
    let app = format!(
        "apiVersion: pier.dev/v1alpha1\nkind: ProxyRoute\nmetadata: {{name: app, namespace: default}}\nspec: {{backends: [{{address: \"{}\"}}], basicAuth: {{secretName: missing}}}}\n",
        named_backend("app")
    );
    let pier = Running::start(&[("app.yaml", &app)], &[]);
    assert_eq!(pier.get("/", &[]).status, 404, "refused, not served open");
}
