#!/usr/bin/env bash
# Builds the Pier image, and the pause image the e2e node's pods need, with
# no registry: the base images are made here from Debian's packages and the
# host's Rust toolchain, then the repository's own Dockerfile is built with
# them as build arguments (the same file a user with a registry builds with
# its defaults). Prints the path of a docker-save tarball holding
#
#   pier.local/pier:dev      both binaries, non-root, no shell
#   pier.local/pause:3.10    a static pause process, nothing else
#
# ready for `ctr -n k8s.io images import`.
#
#   e2e/scripts/image.sh            build (reusing every cache) and print the tarball
#
# Needs root; installs Debian's docker.io and debootstrap when missing
# (packages.sh). Caches live under ${PIER_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pier-e2e}:
# the Debian root filesystem, Docker's data root and BuildKit's cargo caches,
# so later builds only recompile what changed. Starts its own dockerd on a
# private socket when none answers there; it is left running for the next
# build and stopped by `e2e/scripts/image.sh stop`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${PIER_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pier-e2e}
suite=bookworm
mirror=${PIER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
rust_version=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$repo/rust-toolchain.toml")

docker_dir=$cache/docker
sock=$docker_dir/docker.sock
export DOCKER_HOST=unix://$sock
# The Debian client: it has BuildKit built in (cache mounts), where a newer
# client without the buildx plugin falls back to the legacy builder.
docker=/usr/bin/docker
export DOCKER_BUILDKIT=1

builder_image=pier.local/rust:$rust_version-$suite
runtime_image=pier.local/cc:$suite
pier_image=pier.local/pier:dev
pause_image=pier.local/pause:3.10
out=$cache/images/pier-images.tar

log() { printf 'image: %s\n' "$*" >&2; }

start_dockerd() {
	if $docker version >/dev/null 2>&1; then
		return
	fi
	mkdir -p "$docker_dir"
	log "starting dockerd on $sock (log: $docker_dir/dockerd.log)"
	# No bridge and no iptables rules: builds use the host's network, and
	# the node's pods get theirs from CNI, not from Docker.
	setsid dockerd \
		--host "$DOCKER_HOST" \
		--data-root "$docker_dir/root" \
		--exec-root "$docker_dir/exec" \
		--pidfile "$docker_dir/dockerd.pid" \
		--bridge none --iptables=false --ip6tables=false \
		</dev/null >"$docker_dir/dockerd.log" 2>&1 &
	for _ in $(seq 1 120); do
		if $docker version >/dev/null 2>&1; then
			return
		fi
		sleep 0.5
	done
	tail -n 30 "$docker_dir/dockerd.log" >&2
	log "dockerd did not answer within 60 s"
	exit 1
}

stop_dockerd() {
	if [ -f "$docker_dir/dockerd.pid" ]; then
		kill "$(cat "$docker_dir/dockerd.pid")" 2>/dev/null || true
	fi
}

has_image() { $docker image inspect "$1" >/dev/null 2>&1; }

# A Debian root filesystem with a C toolchain (jemalloc and ring need it),
# made once by debootstrap.
debian_rootfs() {
	local root=$cache/rootfs-$suite
	if [ ! -f "$root/.complete" ]; then
		log "debootstrap $suite into $root (once)"
		rm -rf "$root"
		debootstrap --variant=minbase --include=ca-certificates,gcc,libc6-dev,make \
			"$suite" "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
			tail -n 30 "$cache/debootstrap.log" >&2
			exit 1
		}
		rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
		touch "$root/.complete"
	fi
	printf '%s\n' "$root"
}

# The build stage's base, standing in for docker.io/library/rust: the
# Debian root filesystem plus the toolchain rust-toolchain.toml pins,
# copied from the host's rustup (rustc, cargo and the standard library;
# no docs, no other targets).
builder_base() {
	has_image "$builder_image" && return
	local root sysroot staging
	root=$(debian_rootfs)
	sysroot=$(cd "$repo" && rustc --print sysroot)
	staging=$(mktemp -d "$cache/builder.XXXXXX")
	log "making $builder_image from $root and $sysroot"
	mkdir -p "$staging/usr/local/rust/lib/rustlib"
	cp -a "$sysroot/bin" "$staging/usr/local/rust/"
	find "$sysroot/lib" -maxdepth 1 -name 'lib*.so*' -exec cp -a {} "$staging/usr/local/rust/lib/" \;
	cp -a "$sysroot/lib/rustlib/x86_64-unknown-linux-gnu" "$staging/usr/local/rust/lib/rustlib/"
	tar -C "$root" --exclude=./.complete -c . | tar -C "$staging" -x
	# The host's trust store, so that cargo in the build reaches crates.io
	# the way the host does (through whatever TLS proxy the host trusts).
	# Build stage only: the runtime image keeps Debian's own bundle.
	cp /etc/ssl/certs/ca-certificates.crt "$staging/etc/ssl/certs/ca-certificates.crt"
	tar -C "$staging" -c . | $docker import \
		--change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'ENV CARGO_HOME=/usr/local/cargo' \
		- "$builder_image" >/dev/null
	rm -rf "$staging"
}

# The runtime base, standing in for gcr.io/distroless/cc-debian12:nonroot:
# glibc and libgcc from the same Debian release, CA certificates, and the
# users root and nonroot (65532). No shell, no package manager.
runtime_base() {
	has_image "$runtime_image" && return
	local root staging pkg
	root=$(debian_rootfs)
	staging=$(mktemp -d "$cache/runtime.XXXXXX")
	log "making $runtime_image from $root"
	# usrmerge first: /lib -> usr/lib and friends, so the files below land
	# behind the links as in Debian (the loader is /lib64/ld-linux-x86-64.so.2).
	mkdir -p "$staging/usr/lib" "$staging/usr/lib64" "$staging/usr/bin" "$staging/usr/sbin"
	for link in bin lib lib64 sbin; do
		if [ -L "$root/$link" ]; then cp -a "$root/$link" "$staging/"; fi
	done
	for pkg in libc6 libgcc-s1; do
		# Every regular file and link the package installs, docs excepted.
		(cd "$root" && sed 's#^/##' "var/lib/dpkg/info/$pkg:amd64.list" |
			while read -r f; do
				if [ -n "$f" ] && [ ! -d "$f" ] && [ -e "$f" -o -L "$f" ]; then printf '%s\n' "$f"; fi
			done | grep -v '^usr/share/' | tar --no-recursion -c -T -) | tar -C "$staging" -x
	done
	mkdir -p "$staging/etc/ssl/certs" "$staging/tmp" "$staging/home/nonroot"
	chmod 1777 "$staging/tmp"
	chown 65532:65532 "$staging/home/nonroot"
	cp "$root/etc/ssl/certs/ca-certificates.crt" "$staging/etc/ssl/certs/"
	printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$staging/etc/passwd"
	printf 'root:x:0:\nnonroot:x:65532:\n' >"$staging/etc/group"
	printf 'hosts: files dns\n' >"$staging/etc/nsswitch.conf"
	tar -C "$staging" -c . | $docker import --change 'USER 65532:65532' - "$runtime_image" >/dev/null
	rm -rf "$staging"
}

pause() {
	has_image "$pause_image" && return
	local staging
	staging=$(mktemp -d "$cache/pause.XXXXXX")
	gcc -static -O2 -s -o "$staging/pause" "$here/pause.c"
	tar -C "$staging" -c pause | $docker import --change 'ENTRYPOINT ["/pause"]' \
		--change 'USER 65535:65535' - "$pause_image" >/dev/null
	rm -rf "$staging"
}

case "${1:-build}" in
stop)
	stop_dockerd
	exit 0
	;;
build) ;;
*)
	echo "usage: $0 [build|stop]" >&2
	exit 2
	;;
esac

mkdir -p "$cache/images"
bash "$here/packages.sh"
start_dockerd
builder_base
runtime_base
pause
log "docker build $pier_image (Dockerfile with BUILD_IMAGE=$builder_image RUNTIME_IMAGE=$runtime_image)"
started=$(date +%s)
$docker build --network host \
	--build-arg "BUILD_IMAGE=$builder_image" \
	--build-arg "RUNTIME_IMAGE=$runtime_image" \
	--build-arg "RUST_VERSION=$rust_version" \
	-t "$pier_image" "$repo" >"$cache/images/build.log" 2>&1 || {
	tail -n 40 "$cache/images/build.log" >&2
	exit 1
}
log "built in $(($(date +%s) - started)) s; $($docker image inspect -f '{{.Size}}' "$pier_image") bytes"

# What the image promises: the non-root user, both binaries, no shell.
user=$($docker image inspect -f '{{.Config.User}}' "$pier_image")
if [ "$user" != 65532:65532 ]; then
	log "$pier_image runs as '$user', not 65532:65532"
	exit 1
fi
cid=$($docker create "$pier_image")
files=$($docker export "$cid" | tar -t)
$docker rm "$cid" >/dev/null
for bin in usr/local/bin/pier-controller usr/local/bin/pier-dataplane; do
	if ! grep -qx "$bin" <<<"$files"; then
		log "$pier_image lacks /$bin"
		exit 1
	fi
done
if grep -Eq '^(usr/)?bin/(ba|da)?sh$' <<<"$files"; then
	log "$pier_image has a shell"
	exit 1
fi
$docker save -o "$out.tmp" "$pier_image" "$pause_image"
mv "$out.tmp" "$out"
printf '%s\n' "$out"
