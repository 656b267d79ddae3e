//go:build tools

// Package tools pins CoreDNS, the e2e node's cluster DNS, so that
// `go mod tidy` keeps its requirements; the harness builds it with
// `go build github.com/coredns/coredns` in this directory.
package tools

import _ "github.com/coredns/coredns"
