//! The Gateway API CRDs (standard channel) from the upstream release, taken
//! from the `sigs.k8s.io/gateway-api` Go module that `go/gateway-api/`
//! pins: downloaded once through the Go module proxy into Go's module
//! cache, then read from `config/crd/standard/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use crate::HarnessError;

/// The module and the version `go/gateway-api/go.mod` pins.
pub const MODULE: &str = "sigs.k8s.io/gateway-api";
/// The pinned release.
pub const VERSION: &str = "v1.4.1";

/// The standard channel's CRDs: GatewayClass, Gateway, HTTPRoute,
/// GRPCRoute, ReferenceGrant, BackendTLSPolicy.
///
/// # Errors
/// Without Go, or when the module cannot be downloaded or its YAML read.
pub fn standard_crds() -> Result<Vec<CustomResourceDefinition>, HarnessError> {
    let dir = module_dir()?.join("config/crd/standard");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| HarnessError::io(format!("listing {}", dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut crds = Vec::with_capacity(files.len());
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| HarnessError::io(format!("reading {}", file.display()), e))?;
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).map_err(|e| HarnessError::Command {
                command: format!("parsing {}", file.display()),
                output: e.to_string(),
            })?;
        crds.push(crd);
    }
    Ok(crds)
}

/// The module's directory in Go's module cache, downloaded if need be.
fn module_dir() -> Result<PathBuf, HarnessError> {
    let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("go/gateway-api");
    let go = crate::binaries::find_go().ok_or_else(|| HarnessError::Command {
        command: "go mod download".to_owned(),
        output: "Go (1.26 or newer) is needed to fetch the Gateway API CRDs; install it or put it on PATH".to_owned(),
    })?;
    let out = Command::new(&go)
        .current_dir(&wrapper)
        .args(["mod", "download", "-json", MODULE])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::io(format!("running {} mod download", go.display()), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("\"Dir\": \"")?;
        Some(PathBuf::from(
            rest.trim_end_matches(',').trim_end_matches('"'),
        ))
    });
    match dir {
        Some(dir) if out.status.success() => Ok(dir),
        _ => Err(HarnessError::Command {
            command: format!("go mod download -json {MODULE} (in {})", wrapper.display()),
            output: format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_wrapper_module_pins_the_version_named_here() {
        let go_mod = include_str!("../go/gateway-api/go.mod");
        assert!(
            go_mod.contains(&format!("require {} {}", super::MODULE, super::VERSION)),
            "{go_mod}"
        );
    }
}
