//! The committed CRD YAML is exactly what the Rust types generate.

use std::path::Path;

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml");
    for (file, crd) in pier_crds::all() {
        let generated = pier_crds::render(&crd).expect("CRD renders as YAML");
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == generated,
            "crds/yaml/{file} is out of date with the Rust types; regenerate it with \
             `cargo run -p pier-crds --bin crdgen -- --write` and commit the result"
        );
    }
}

#[test]
fn static_route_example_from_the_docs_parses() {
    let yaml = r#"
apiVersion: pier.dev/v1alpha1
kind: StaticRoute
metadata: {name: site, namespace: default}
spec:
  hosts: ["www.example.com", "*.cdn.example.com"]
  path: {type: PathPrefix, value: /}
  root: /srv/site
  index: index.html
  cacheControl: "public, max-age=3600"
  precompressed: true
  fallback: /index.html
"#;
    let route: pier_crds::StaticRoute = serde_saphyr::from_str(yaml).expect("example parses");
    assert_eq!(route.spec.hosts.len(), 2);
    assert_eq!(route.spec.root, "/srv/site");
    assert!(route.spec.precompressed);
    let path = route.spec.path.expect("path given");
    assert_eq!(path.kind, pier_crds::PathMatchType::PathPrefix);
}
