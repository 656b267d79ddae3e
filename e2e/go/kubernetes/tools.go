//go:build tools

// Package tools pins the Kubernetes main packages the e2e harness runs so
// that `go mod tidy` keeps their requirements; the harness builds each with
// `go build k8s.io/kubernetes/cmd/<name>` in this directory.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
