//! The dataplane's modules are layered one way, and no crate of the
//! workspace has an import cycle between its top-level modules. A new
//! `crate::` path that points up a layer (or sideways within one) fails
//! here, with the file and the edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The dataplane's layers, lowest first. A module may import from the
/// layers below its own, never from its own layer or above.
const DATAPLANE: &[&[&str]] = &[
    // Pure: flags, buffer pools, HTTP/1.1 parsing and forwarding rules.
    &["args", "pool", "http"],
    &["metrics"],
    &["spool"],
    &["body"],
    // Each a concern of its own, none importing another.
    &["balance", "certs", "files", "filter", "routing", "upstream"],
    &["context"],
    &["proxy"],
    &["table"],
    &["dispatch"],
    &["front"],
    &["admin", "server"],
    &["source"],
];

/// Top-level modules of a crate's `src`, each with its source files.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("src is readable") {
        let path = entry.expect("entry").path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if matches!(stem, "lib" | "main" | "bin") {
            continue;
        }
        let files = out.entry(stem.to_owned()).or_default();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir is readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The top-level modules a source text names with `crate::`, also inside
/// `use crate::{a, b::c}` groups. Comments are skipped.
fn imports(text: &str, known: &BTreeMap<String, Vec<PathBuf>>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split(['}', ','])
                    .map(|n| n.trim().split("::").next().unwrap_or(""))
                    .collect(),
                None => vec![
                    rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                        .next()
                        .unwrap_or(""),
                ],
            };
            for name in names {
                if known.contains_key(name) {
                    out.insert(name.to_owned());
                }
            }
        }
    }
    out
}

/// Every edge `from -> to` between top-level modules, with a file that
/// makes it.
fn edges(src: &Path) -> BTreeMap<(String, String), PathBuf> {
    let modules = modules(src);
    let mut out = BTreeMap::new();
    for (module, files) in &modules {
        for file in files {
            let text = std::fs::read_to_string(file).expect("source is readable");
            for to in imports(&text, &modules) {
                if &to != module {
                    out.entry((module.clone(), to))
                        .or_insert_with(|| file.clone());
                }
            }
        }
    }
    out
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

#[test]
fn dataplane_modules_import_only_from_lower_layers() {
    let src = workspace().join("dataplane/src");
    let rank: BTreeMap<&str, usize> = DATAPLANE
        .iter()
        .enumerate()
        .flat_map(|(i, layer)| layer.iter().map(move |m| (*m, i)))
        .collect();
    let modules = modules(&src);
    let unplaced: Vec<&String> = modules
        .keys()
        .filter(|m| !rank.contains_key(m.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "give these modules a layer in tests/layers.rs: {unplaced:?}"
    );
    let wrong: Vec<String> = edges(&src)
        .into_iter()
        .filter(|((from, to), _)| rank[to.as_str()] >= rank[from.as_str()])
        .map(|((from, to), file)| format!("{from} -> {to} ({})", file.display()))
        .collect();
    assert!(
        wrong.is_empty(),
        "imports that point up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_crate_has_an_import_cycle() {
    for krate in [
        "crds",
        "snapshot",
        "compile",
        "controller",
        "dataplane",
        "e2e",
    ] {
        let src = workspace().join(krate).join("src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for ((from, to), _) in edges(&src) {
            graph.entry(from).or_default().insert(to);
        }
        // Depth-first search; a grey node met again closes a cycle.
        fn visit(
            node: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            state: &mut BTreeMap<String, bool>,
            path: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            match state.get(node) {
                Some(true) => return None,
                Some(false) => {
                    let start = path.iter().position(|n| n == node).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(node.to_owned());
                    return Some(cycle);
                }
                None => {}
            }
            state.insert(node.to_owned(), false);
            path.push(node.to_owned());
            for next in graph.get(node).into_iter().flatten() {
                if let Some(cycle) = visit(next, graph, state, path) {
                    return Some(cycle);
                }
            }
            path.pop();
            state.insert(node.to_owned(), true);
            None
        }
        let mut state = BTreeMap::new();
        for node in graph.keys() {
            let cycle = visit(node, &graph, &mut state, &mut Vec::new());
            assert!(cycle.is_none(), "{krate}: import cycle {:?}", cycle);
        }
    }
}

/// Names that only the compiler and the standalone routes source may use.
const KUBERNETES: &[&str] = &[
    "pier_compile",
    "pier_crds",
    "k8s_openapi",
    "kube",
    "serde_saphyr",
];

#[test]
fn the_serving_core_links_no_kubernetes_types() {
    // The snapshot crate depends on none of them.
    let manifest = std::fs::read_to_string(workspace().join("snapshot/Cargo.toml")).expect("read");
    for dep in ["pier-crds", "pier-compile", "k8s-openapi", "kube"] {
        assert!(
            !manifest
                .lines()
                .any(|l| l.starts_with(&format!("{dep} ")) || l.starts_with(&format!("{dep}."))),
            "pier-snapshot must not depend on {dep}"
        );
    }
    // The dataplane takes them only through its `standalone` feature ...
    let manifest = std::fs::read_to_string(workspace().join("dataplane/Cargo.toml")).expect("read");
    let dependencies = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("a [dependencies] table");
    for dep in ["pier-compile", "pier-crds", "k8s-openapi", "serde-saphyr"] {
        let line = dependencies
            .lines()
            .find(|l| l.starts_with(&format!("{dep} ")) || l.starts_with(&format!("{dep}.")))
            .unwrap_or_else(|| panic!("pier-dataplane lists {dep}"));
        assert!(
            line.contains("optional = true") && manifest.contains(&format!("\"dep:{dep}\"")),
            "{dep} must be an optional dependency of the standalone feature: {line}"
        );
    }
    // ... and only the routes-directory source names them.
    let src = workspace().join("dataplane/src");
    let mut wrong = Vec::new();
    for file in rust_files(&src) {
        if file.starts_with(src.join("source/files")) || file == src.join("source/files.rs") {
            continue;
        }
        // Unit-test modules may build routes with the compiler (a
        // dev-dependency): they are not linked into the dataplane.
        if file.to_string_lossy().ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        for name in KUBERNETES {
            if code.contains(&format!("{name}::")) {
                wrong.push(format!("{} uses {name}", file.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "outside source/files:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_plain_imports() {
    let known: BTreeMap<String, Vec<PathBuf>> = ["body", "proxy", "table"]
        .into_iter()
        .map(|m| (m.to_owned(), Vec::new()))
        .collect();
    let text = "use crate::{body::Body, proxy};\nlet t = crate::table::x(); // crate::nothing\n";
    let found: Vec<String> = imports(text, &known).into_iter().collect();
    assert_eq!(found, ["body", "proxy", "table"]);
}
