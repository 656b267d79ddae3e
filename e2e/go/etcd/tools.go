//go:build tools

// Package tools pins the etcd server main package so that `go mod tidy` keeps
// its requirements; the e2e harness builds it with
// `go build go.etcd.io/etcd/server/v3` in this directory.
package tools

import _ "go.etcd.io/etcd/server/v3"
