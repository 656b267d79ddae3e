//! Nothing outside a route's root is ever served, however the path is
//! spelled: a table of hostile paths, each refused with 400, 404 or 414,
//! and none returning the secret.

mod support;

use support::{Running, static_route, write};

const SECRET: &[u8] = b"TOP-SECRET-CONTENT";

struct Fixture {
    pier: Running,
    _dir: tempfile::TempDir,
}

/// `/outside/secret.txt` and `/outside/.env` beside the root; inside the
/// root a public file, a dotfile, and symlinks leading out and in.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("root");
    write(&root, "public.txt", b"public");
    write(&root, "sub/inner.txt", b"inner");
    write(&root, ".env", SECRET);
    write(&root, ".git/config", SECRET);
    write(&root, "sub/.htpasswd", SECRET);
    write(dir.path(), "outside/secret.txt", SECRET);
    write(dir.path(), "root-sibling.txt", SECRET);
    let link = |target: &std::path::Path, name: &str| {
        std::os::unix::fs::symlink(target, root.join(name)).expect("symlink");
    };
    link(&dir.path().join("outside"), "out-dir");
    link(&dir.path().join("outside/secret.txt"), "out-file");
    link(std::path::Path::new("../outside/secret.txt"), "rel-out");
    link(std::path::Path::new("/etc/passwd"), "passwd");
    link(std::path::Path::new("/proc/self/root/etc/passwd"), "magic");
    link(std::path::Path::new("sub/inner.txt"), "in-link");
    let spec = format!("{{root: {}}}", root.display());
    let pier = Running::start(&[("r.yaml", &static_route("r", &spec))], &[]);
    Fixture { pier, _dir: dir }
}

#[test]
fn hostile_paths_are_refused() {
    let f = fixture();
    let long_segment = format!("/{}", "a".repeat(300));
    let long_path = format!("/{}", "a/".repeat(2100));
    let cases: Vec<(&str, &[u16])> = vec![
        // Traversal, plain and encoded in every way.
        ("/../outside/secret.txt", &[400]),
        ("/../../../../etc/passwd", &[400]),
        ("/sub/../../outside/secret.txt", &[400]),
        ("/%2e%2e/outside/secret.txt", &[400]),
        ("/%2E%2E/outside/secret.txt", &[400]),
        ("/.%2e/outside/secret.txt", &[400]),
        ("/%2e./outside/secret.txt", &[400]),
        ("/sub/%2e%2e/%2e%2e/outside/secret.txt", &[400]),
        ("/..%2foutside%2fsecret.txt", &[400]),
        ("/%2e%2e%2foutside%2fsecret.txt", &[400]),
        ("/sub%2f..%2f..%2foutside/secret.txt", &[400]),
        ("/%252e%252e/outside/secret.txt", &[404]),
        ("/..%5coutside%5csecret.txt", &[400]),
        ("/..\\outside\\secret.txt", &[400]),
        ("/sub\\..\\..\\outside\\secret.txt", &[400]),
        ("/%5c..%5c..%5coutside/secret.txt", &[400]),
        ("/..;/outside/secret.txt", &[404]),
        ("/...", &[404]),
        ("/..../outside/secret.txt", &[404]),
        ("/%c0%ae%c0%ae/outside/secret.txt", &[404]),
        ("/%c0%af../outside/secret.txt", &[404]),
        ("/%uff0e%uff0e/outside/secret.txt", &[400]),
        ("/%", &[400]),
        ("/%zz", &[400]),
        ("/a%2", &[400]),
        // NUL and control bytes.
        ("/public.txt%00.png", &[400]),
        ("/%00", &[400]),
        ("/sub/inner.txt%00", &[400]),
        ("/public.txt%0d%0aX-Injected:%201", &[400]),
        ("/%0a", &[400]),
        ("/%7f", &[400]),
        ("/%1b[31m", &[400]),
        // Dotfiles, directly and encoded.
        ("/.env", &[404]),
        ("/%2eenv", &[404]),
        ("/.git/config", &[404]),
        ("/%2egit/config", &[404]),
        ("/sub/.htpasswd", &[404]),
        ("/sub/%2Ehtpasswd", &[404]),
        ("/./.env", &[404]),
        ("//.env", &[404]),
        // Symlinks that leave the root.
        ("/out-dir/secret.txt", &[404]),
        ("/out-file", &[404]),
        ("/rel-out", &[404]),
        ("/passwd", &[404]),
        ("/magic", &[404]),
        ("/out-dir/", &[404]),
        ("/out-dir", &[404]),
        // Absolute-looking and doubled slashes resolve inside the root.
        ("//outside/secret.txt", &[404]),
        ("///etc/passwd", &[404]),
        ("/root-sibling.txt", &[404]),
        ("/public.txt/../../outside/secret.txt", &[400]),
        ("/public.txt/", &[404]),
        // Overlong.
        (&long_segment, &[400, 404, 414]),
        (&long_path, &[400, 404, 414, 431]),
    ];
    assert!(
        cases.len() >= 50,
        "the table keeps at least 50 hostile paths"
    );
    for (path, allowed) in cases {
        let res = f.pier.get(path, &[]);
        assert!(
            allowed.contains(&res.status),
            "{path:?} answered {} (expected one of {allowed:?})",
            res.status
        );
        assert!(
            !res.body.windows(SECRET.len()).any(|w| w == SECRET),
            "{path:?} leaked the secret"
        );
        let content_length = res.header("content-length").unwrap_or("0");
        assert_eq!(content_length, "0", "{path:?} sent a body");
    }
}

#[test]
fn benign_lookalikes_are_served() {
    let f = fixture();
    for (path, body) in [
        ("/public.txt", &b"public"[..]),
        ("/./public.txt", b"public"),
        ("//public.txt", b"public"),
        ("/sub//inner.txt", b"inner"),
        ("/%70ublic.txt", b"public"),
        ("/in-link", b"inner"),
    ] {
        let res = f.pier.get(path, &[]);
        assert_eq!(res.status, 200, "{path}");
        assert_eq!(res.body, body, "{path}");
    }
}

#[test]
fn absolute_form_request_targets_are_confined_too() {
    let f = fixture();
    let res = f
        .pier
        .request("GET http://test/../outside/secret.txt HTTP/1.1\r\nHost: test\r\n\r\n");
    assert!(matches!(res.status, 400 | 404), "{}", res.status);
    assert!(!res.body.windows(SECRET.len()).any(|w| w == SECRET));
}
