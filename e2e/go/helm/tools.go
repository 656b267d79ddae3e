//go:build tools

// Package tools pins the helm command so that `go mod tidy` keeps its
// requirements; the e2e harness builds it with
// `go build helm.sh/helm/v3/cmd/helm` in this directory.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
