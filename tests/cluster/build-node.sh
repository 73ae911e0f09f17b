#!/usr/bin/env bash
# Builds what a real node of the local cluster needs beyond the control plane (tests/cluster/build-binaries.sh),
# once, into $KILN_CACHE/bin (default ~/.cache/kiln/bin): kubelet and kube-proxy compiled from the same Debian
# source tree, and the pause container's static binary from its build/pause/linux/pause.c. It also installs the
# node's Debian packages when missing: containerd, runc, the CNI plugins, buildah, debootstrap, iptables.
# Each step says what it does; a failure names the step and the log to read.
set -euo pipefail

CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
BIN=$CACHE/bin
SRC=$CACHE/src
LOG=$CACHE/build-node.log
WANT="kubelet kube-proxy"
PACKAGES="containerd runc containernetworking-plugins buildah debootstrap iptables gcc libc6-dev"
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$BIN"
: >"$LOG"

step=0
total=4
say() { step=$((step+1)); echo "[kiln] node build step $step/$total: $*"; }
fail() { echo "[kiln] FAILED at node build step $step ($1); read $LOG" >&2; tail -n 20 "$LOG" >&2; exit 1; }
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# shellcheck source=tests/cluster/go-make.sh
. "$HERE/go-make.sh"

say "Debian packages: $PACKAGES"
missing=$(for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  echo "[kiln]   installing: $(echo $missing)"
  { sudo_ apt-get update -q && DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -q $missing; } >>"$LOG" 2>&1 \
    || fail "apt-get install"
fi

say "control-plane binaries and the Kubernetes source tree (tests/cluster/build-binaries.sh)"
bash "$HERE/build-binaries.sh" || fail "build-binaries.sh"
tree=$(ls -d "$SRC"/kubernetes-*/ | head -n1)
tree=${tree%/}

have_all() { for b in $WANT; do [ -x "$BIN/$b" ] || return 1; done; }
say "compile $WANT (about 6 minutes on 2 busy cores with a cold Go cache, 2 after the control plane's build)"
if have_all && [ "${1:-}" != "--force" ]; then
  echo "[kiln]   cached in $BIN"
else
  kiln_go_make "$tree" "$LOG" keep $WANT || fail "go build"
  for b in $WANT; do cp "$tree/_output/bin/$b" "$BIN/$b"; done
fi

say "the pause container's binary (build/pause/linux/pause.c, static)"
if [ ! -x "$BIN/pause" ] || [ "${1:-}" = "--force" ]; then
  gcc -Os -static -Wall -Werror -DVERSION=kiln -o "$BIN/pause" "$tree/build/pause/linux/pause.c" >>"$LOG" 2>&1 \
    || fail "gcc pause.c"
fi
echo "[kiln] node binaries: $(cd "$BIN" && ls kubelet kube-proxy pause | tr '\n' ' ')"
