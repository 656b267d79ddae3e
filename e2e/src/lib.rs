//! End-to-end tests against a real kube-apiserver and etcd live here; the
//! control-plane issue adds the harness that builds and starts them.
