//! Prints Pier's CRDs as YAML, or writes them into `crds/yaml/` with `--write`.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let write = std::env::args().any(|a| a == "--write");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml");
    for (file, crd) in pier_crds::all() {
        let yaml = pier_crds::render(&crd)?;
        if write {
            std::fs::write(dir.join(file), yaml)?;
            eprintln!("wrote crds/yaml/{file}");
        } else {
            print!("{yaml}");
        }
    }
    Ok(())
}
