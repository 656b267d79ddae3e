#!/usr/bin/env bash
# Installs the Debian packages the e2e node and the image build need, when
# a command of theirs is missing: a Docker engine (image builds), containerd
# and runc (the node's container runtime), Debian's CNI plugins, iptables
# (kubelet and kube-proxy), debootstrap (the image's base from Debian's
# packages) and a static C library (the pause process).
set -euo pipefail

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v containerd >/dev/null || need+=(containerd)
command -v ctr >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "packages.sh: ${need[*]} missing and not root: install them with apt-get" >&2
	exit 1
fi
echo "packages.sh: installing ${need[*]}" >&2
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
