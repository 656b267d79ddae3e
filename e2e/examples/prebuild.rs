//! Builds every tool the e2e harness runs into its cache, so that the
//! first test does not wait for Go:
//!
//! ```sh
//! cargo run -p pier-e2e --example prebuild
//! ```

use pier_e2e::binaries::{self, Tool};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for tool in Tool::ALL {
        let path = binaries::binary(tool)?;
        println!("{tool}: {}", path.display());
    }
    Ok(())
}
