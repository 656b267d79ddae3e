//! Static serving over real sockets: headers, conditionals, ranges,
//! directories, precompressed siblings, large files.

mod support;

use std::path::Path;

use support::{Running, request, static_route, write};

fn site(root: &Path, spec: &str) -> Running {
    let spec = format!("{{root: {}, {spec}}}", root.display());
    Running::start(&[("site.yaml", &static_route("site", &spec))], &[])
}

#[test]
fn file_is_served_with_validators_and_type() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "a/hello.txt", b"hello world");
    let pier = site(dir.path(), "cacheControl: 'public, max-age=60'");
    let res = pier.get("/a/hello.txt", &[]);
    assert_eq!(res.status, 200);
    assert_eq!(res.body, b"hello world");
    assert_eq!(res.header("content-length"), Some("11"));
    assert_eq!(
        res.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(res.header("accept-ranges"), Some("bytes"));
    assert_eq!(res.header("cache-control"), Some("public, max-age=60"));
    assert!(
        res.header("last-modified")
            .is_some_and(|v| v.ends_with(" GMT"))
    );
    assert!(res.header("date").is_some());
    let etag = res.header("etag").expect("etag");
    assert!(etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"));
}

#[test]
fn head_has_the_headers_of_get_and_no_body() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "x.bin", &[7u8; 1000]);
    let pier = site(dir.path(), "");
    let mut stream = pier.connect();
    let head = support::send(&mut stream, &request("HEAD", "/x.bin", &[]));
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1000"));
    assert!(head.body.is_empty());
    // The connection stays usable: no stray body bytes were sent.
    let get = support::send(&mut stream, &request("GET", "/x.bin", &[]));
    assert_eq!(get.body.len(), 1000);
    assert_eq!(get.header("etag"), head.header("etag"));
}

#[test]
fn other_methods_get_405_with_allow() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "x", b"x");
    let pier = site(dir.path(), "");
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let res = pier.request(&request(method, "/x", &["Content-Length: 0"]));
        assert_eq!(res.status, 405, "{method}");
        assert_eq!(res.header("allow"), Some("GET, HEAD"));
    }
}

#[test]
fn conditional_requests_follow_rfc_9110() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "c.txt", b"0123456789");
    let pier = site(dir.path(), "");
    let first = pier.get("/c.txt", &[]);
    let etag = first.header("etag").expect("etag").to_owned();
    let modified = first.header("last-modified").expect("lm").to_owned();

    let inm = pier.get("/c.txt", &[&format!("If-None-Match: {etag}")]);
    assert_eq!(inm.status, 304);
    assert!(inm.body.is_empty());
    assert_eq!(inm.header("etag"), Some(etag.as_str()));

    assert_eq!(
        pier.get("/c.txt", &[&format!("If-Modified-Since: {modified}")])
            .status,
        304
    );
    assert_eq!(
        pier.get("/c.txt", &["If-None-Match: \"other\""]).status,
        200
    );
    assert_eq!(pier.get("/c.txt", &["If-Match: \"other\""]).status, 412);
    assert_eq!(
        pier.get("/c.txt", &[&format!("If-Match: {etag}")]).status,
        200
    );
    assert_eq!(
        pier.get(
            "/c.txt",
            &["If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT"]
        )
        .status,
        412
    );
    // If-None-Match wins over If-Modified-Since.
    let both = pier.get(
        "/c.txt",
        &[
            "If-None-Match: \"other\"",
            &format!("If-Modified-Since: {modified}"),
        ],
    );
    assert_eq!(both.status, 200);
}

#[test]
fn ranges_single_suffix_open_multi_and_unsatisfiable() {
    let dir = tempfile::tempdir().expect("dir");
    let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    write(dir.path(), "r.bin", &data);
    let pier = site(dir.path(), "");

    let res = pier.get("/r.bin", &["Range: bytes=100-199"]);
    assert_eq!(res.status, 206);
    assert_eq!(res.header("content-range"), Some("bytes 100-199/10000"));
    assert_eq!(res.body, &data[100..200]);

    let res = pier.get("/r.bin", &["Range: bytes=-10"]);
    assert_eq!(res.header("content-range"), Some("bytes 9990-9999/10000"));
    assert_eq!(res.body, &data[9990..]);

    let res = pier.get("/r.bin", &["Range: bytes=9000-"]);
    assert_eq!(res.body, &data[9000..]);

    let res = pier.get("/r.bin", &["Range: bytes=10000-"]);
    assert_eq!(res.status, 416);
    assert_eq!(res.header("content-range"), Some("bytes */10000"));

    let res = pier.get("/r.bin", &["Range: bytes=oops"]);
    assert_eq!(res.status, 200);
    assert_eq!(res.body.len(), 10_000);

    let res = pier.get("/r.bin", &["Range: bytes=0-1,5000-5002"]);
    assert_eq!(res.status, 206);
    let content_type = res.header("content-type").expect("type");
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .expect("multipart type");
    let mut expected = Vec::new();
    expected.extend_from_slice(
        format!("--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-1/10000\r\n\r\n").as_bytes(),
    );
    expected.extend_from_slice(&data[0..2]);
    expected.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 5000-5002/10000\r\n\r\n").as_bytes(),
    );
    expected.extend_from_slice(&data[5000..5003]);
    expected.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert_eq!(res.body, expected);
    assert_eq!(
        res.header("content-length"),
        Some(expected.len().to_string().as_str())
    );
}

#[test]
fn if_range_with_a_stale_validator_sends_the_whole_file() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "r.bin", &[1u8; 100]);
    let pier = site(dir.path(), "");
    let etag = pier
        .get("/r.bin", &[])
        .header("etag")
        .expect("etag")
        .to_owned();
    let fresh = pier.get(
        "/r.bin",
        &["Range: bytes=0-9", &format!("If-Range: {etag}")],
    );
    assert_eq!(fresh.status, 206);
    let stale = pier.get("/r.bin", &["Range: bytes=0-9", "If-Range: \"stale\""]);
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body.len(), 100);
}

#[test]
fn files_over_4_gib_have_the_right_length_and_ranges() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("big.bin");
    let len: u64 = 5 << 30;
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(len).expect("sparse 5 GiB");
    {
        use std::os::unix::fs::FileExt;
        file.write_all_at(b"the end", len - 7).expect("tail");
    }
    let pier = site(dir.path(), "");
    let head = pier.request(&request("HEAD", "/big.bin", &[]));
    assert_eq!(head.header("content-length"), Some("5368709120"));
    let tail = pier.get("/big.bin", &["Range: bytes=5368709113-"]);
    assert_eq!(tail.status, 206);
    assert_eq!(
        tail.header("content-range"),
        Some("bytes 5368709113-5368709119/5368709120")
    );
    assert_eq!(tail.body, b"the end");
}

#[test]
fn directories_index_redirect_and_forbid_listing() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "docs/index.html", b"<h1>docs</h1>");
    std::fs::create_dir(dir.path().join("empty")).expect("dir");
    let pier = site(dir.path(), "");
    let res = pier.get("/docs/", &[]);
    assert_eq!(res.status, 200);
    assert_eq!(res.body, b"<h1>docs</h1>");
    assert_eq!(res.header("content-type"), Some("text/html; charset=utf-8"));

    let res = pier.get("/docs?x=1", &[]);
    assert_eq!(res.status, 301);
    assert_eq!(res.header("location"), Some("/docs/?x=1"));

    // A redirect never points off-site, however many slashes led here.
    let res = pier.get("//docs", &[]);
    assert_eq!(res.header("location"), Some("/docs/"));

    let res = pier.get("/empty/", &[]);
    assert_eq!(res.status, 403);
    assert!(res.body.is_empty(), "no listing");
}

#[test]
fn prefix_is_stripped_like_nginx_alias() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "x.png", b"png");
    let spec = format!(
        "{{root: {}, path: {{type: PathPrefix, value: /assets}}}}",
        dir.path().display()
    );
    let pier = Running::start(&[("a.yaml", &static_route("assets", &spec))], &[]);
    assert_eq!(pier.get("/assets/x.png", &[]).body, b"png");
    assert_eq!(
        pier.get("/assets/x.png", &[]).header("content-type"),
        Some("image/png")
    );
    assert_eq!(pier.get("/x.png", &[]).status, 404);
    assert_eq!(pier.get("/assetsx.png", &[]).status, 404);
    assert_eq!(pier.get("/assets", &[]).status, 301);
}

#[test]
fn precompressed_siblings_follow_accept_encoding() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "app.js", b"plain");
    write(dir.path(), "app.js.gz", b"gzipped");
    write(dir.path(), "app.js.br", b"brotli");
    let pier = site(dir.path(), "precompressed: true");

    let br = pier.get("/app.js", &["Accept-Encoding: gzip, br"]);
    assert_eq!(br.body, b"brotli");
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert_eq!(
        br.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(br.header("vary"), Some("Accept-Encoding"));

    let gz = pier.get("/app.js", &["Accept-Encoding: gzip"]);
    assert_eq!(gz.body, b"gzipped");
    assert_ne!(gz.header("etag"), br.header("etag"));

    let plain = pier.get("/app.js", &[]);
    assert_eq!(plain.body, b"plain");
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.header("vary"), Some("Accept-Encoding"));

    let refused = pier.get("/app.js", &["Accept-Encoding: br;q=0, gzip;q=0"]);
    assert_eq!(refused.body, b"plain");
}

#[test]
fn fallback_serves_the_spa_entry_for_missing_files_only() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "index.html", b"app");
    write(dir.path(), "real.css", b"css");
    let pier = site(dir.path(), "fallback: /index.html");
    let res = pier.get("/some/client/route", &[]);
    assert_eq!(res.status, 200);
    assert_eq!(res.body, b"app");
    assert_eq!(pier.get("/real.css", &[]).body, b"css");
    // Hidden files stay hidden; the fallback does not reveal they exist.
    write(dir.path(), ".env", b"secret");
    assert_eq!(pier.get("/.env", &[]).status, 404);
}

#[test]
fn unmatched_host_or_path_is_404() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "x", b"x");
    let spec = format!(
        "{{root: {}, hosts: [www.example.com]}}",
        dir.path().display()
    );
    let pier = Running::start(&[("a.yaml", &static_route("a", &spec))], &[]);
    let res = pier.request("GET /x HTTP/1.1\r\nHost: www.example.com:8080\r\n\r\n");
    assert_eq!(res.status, 200);
    let res = pier.request("GET /x HTTP/1.1\r\nHost: other.example.com\r\n\r\n");
    assert_eq!(res.status, 404);
}

#[test]
fn changed_and_new_files_are_served_after_the_cache_revalidates() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "v.txt", b"one");
    let spec = format!("{{root: {}}}", dir.path().display());
    let pier = Running::start(
        &[("site.yaml", &static_route("site", &spec))],
        &["--file-cache-valid", "100ms"],
    );
    assert_eq!(pier.get("/v.txt", &[]).body, b"one");
    assert_eq!(pier.get("/new.txt", &[]).status, 404);
    // Replaced the way deployments do it: write aside, rename over.
    write(dir.path(), "v.txt.tmp", b"two!");
    std::fs::rename(dir.path().join("v.txt.tmp"), dir.path().join("v.txt")).expect("rename");
    write(dir.path(), "new.txt", b"new");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let changed = pier.get("/v.txt", &[]);
        let created = pier.get("/new.txt", &[]);
        // Every answer is a consistent version: length always matches body.
        assert_eq!(
            changed.header("content-length"),
            Some(changed.body.len().to_string().as_str())
        );
        if changed.body == b"two!" && created.body == b"new" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "changes never served");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let metrics = pier.admin("/metrics").text();
    assert!(
        metrics.contains("pier_dataplane_file_cache_hits_total"),
        "{metrics}"
    );
}

#[test]
fn with_the_cache_off_changes_are_served_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "v.txt", b"one");
    let spec = format!("{{root: {}}}", dir.path().display());
    let pier = Running::start(
        &[("site.yaml", &static_route("site", &spec))],
        &["--file-cache-valid", "0s"],
    );
    assert_eq!(pier.get("/v.txt", &[]).body, b"one");
    write(dir.path(), "v.txt", b"two");
    assert_eq!(pier.get("/v.txt", &[]).body, b"two");
}
