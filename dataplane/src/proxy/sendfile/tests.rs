use super::*;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (n, v) in pairs {
        map.append(*n, HeaderValue::from_static(v));
    }
    map
}

fn handoff(roots: &[&str], pairs: &[(&'static str, &'static str)]) -> Result<String, String> {
    let roots = Roots::new(&roots.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>());
    match roots.handoff(&headers(pairs)) {
        None => Err("none".into()),
        Some(Handoff::File { root, rel }) => Ok(format!(
            "{}|{}",
            root.root().display(),
            String::from_utf8_lossy(&rel)
        )),
        Some(Handoff::Refused { why, .. }) => Err(why.into()),
    }
}

#[test]
fn paths_below_a_root_are_handed_off_element_by_element() {
    let roots = ["/srv/files", "/srv/files/private"];
    let x = |v| handoff(&roots, &[("x-sendfile", v)]);
    assert_eq!(x("/srv/files/a.iso"), Ok("/srv/files|/a.iso".into()));
    assert_eq!(
        x("/srv/files/private/b"),
        Ok("/srv/files/private|/b".into())
    );
    assert_eq!(x("/srv//files/./c"), Ok("/srv/files|/c".into()));
    assert_eq!(x("/srv/files"), Ok("/srv/files|".into()));
    // A sibling directory sharing the prefix is not below the root.
    assert!(x("/srv/filesystem/x").is_err());
    assert!(x("/etc/passwd").is_err());
    assert!(x("/srv/files/../../etc/passwd").is_err());
    assert!(x("relative/path").is_err());
    // `%` is a plain byte in X-Sendfile.
    assert_eq!(x("/srv/files/100%25"), Ok("/srv/files|/100%25".into()));
}

#[test]
fn x_accel_redirect_is_a_uri_path() {
    let x = |v| handoff(&["/srv/files"], &[("x-accel-redirect", v)]);
    assert_eq!(x("/srv/files/a%20b?x=1"), Ok("/srv/files|/a b".into()));
    assert!(x("/srv/files/%2e%2e/secret").is_err());
    assert!(x("/srv/files/a%2fb").is_err());
}

#[test]
fn nothing_is_handed_off_without_roots_or_headers() {
    assert_eq!(
        handoff(&[], &[("x-sendfile", "/srv/files/a")]),
        Err("none".into())
    );
    assert_eq!(handoff(&["/srv"], &[("x-other", "1")]), Err("none".into()));
}

#[test]
fn merged_responses_keep_backend_fields_but_not_its_framing() {
    let mut file = headers(&[
        ("content-type", "application/octet-stream"),
        ("content-length", "10"),
        ("etag", "\"file\""),
    ]);
    let backend = headers(&[
        ("content-type", "application/x-iso9660-image"),
        ("content-length", "0"),
        ("etag", "\"backend\""),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
        ("content-disposition", "attachment"),
        ("x-sendfile", "/srv/files/a.iso"),
        ("x-accel-buffering", "no"),
    ]);
    merge(&mut file, backend);
    assert_eq!(file["content-type"], "application/x-iso9660-image");
    assert_eq!(file["content-length"], "10");
    assert_eq!(file["etag"], "\"file\"");
    let cookies: Vec<_> = file.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(file["content-disposition"], "attachment");
    assert!(file.get("x-sendfile").is_none());
    assert!(file.get("x-accel-buffering").is_none());
}
