//! Prints Pier's CRDs as YAML, or writes them with `--write` into
//! `crds/yaml/` and the chart's `charts/pier/crds/` (which must be
//! identical: a test checks it).

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let write = std::env::args().any(|a| a == "--write");
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = [
        crate_dir.join("yaml"),
        crate_dir.join("../charts/pier/crds"),
    ];
    for (file, crd) in pier_crds::all() {
        let yaml = pier_crds::render(&crd)?;
        if !write {
            print!("{yaml}");
            continue;
        }
        for dir in &dirs {
            std::fs::write(dir.join(file), &yaml)?;
            eprintln!("wrote {}", dir.join(file).display());
        }
    }
    Ok(())
}
