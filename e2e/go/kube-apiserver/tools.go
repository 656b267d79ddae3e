//go:build tools

// Package tools pins the kube-apiserver main package so that `go mod tidy`
// keeps its requirements; the e2e harness builds it with
// `go build k8s.io/kubernetes/cmd/kube-apiserver` in this directory.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
