#!/usr/bin/env bash
# Builds the Kubernetes control plane for the local cluster from Debian's source
# package, once, into $KILN_CACHE (default ~/.cache/kiln). Debian 12 ships etcd and
# kubectl-free Go but no kube-apiserver binary, so we compile the 1.20 tree it carries.
# Each step says what it does; a failure names the step and the log to read.
set -euo pipefail

CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
BIN=$CACHE/bin
SRC=$CACHE/src
LOG=$CACHE/build.log
WANT="kube-apiserver kube-controller-manager kube-scheduler kubectl"
mkdir -p "$BIN" "$SRC"

have_all() { for b in $WANT; do [ -x "$BIN/$b" ] || return 1; done; }
if have_all && [ "${1:-}" != "--force" ]; then
  echo "[kiln] control-plane binaries cached in $BIN"
  exit 0
fi

step=0
total=5
say() { step=$((step+1)); echo "[kiln] build step $step/$total: $*"; }
fail() { echo "[kiln] FAILED at step $step ($1); read $LOG" >&2; tail -n 20 "$LOG" >&2; exit 1; }
: >"$LOG"

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# shellcheck source=tests/cluster/go-make.sh
. "$(dirname "$0")/go-make.sh"

say "enable Debian source packages (deb-src) and install Go, etcd, reflect2 sources"
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  # Mirror the machine's own configured archive rather than naming one here.
  src=/etc/apt/sources.list.d/debian.sources
  if [ -f "$src" ]; then
    awk 'BEGIN{RS="";ORS="\n\n"} /Suites: *bookworm( |$)/ {sub(/Types: *deb/,"Types: deb-src"); print}' "$src" \
      | sudo_ tee /etc/apt/sources.list.d/kiln-src.sources >/dev/null
  else
    grep '^deb ' /etc/apt/sources.list | grep -v security | sed 's/^deb /deb-src /' \
      | sudo_ tee /etc/apt/sources.list.d/kiln-src.list >/dev/null
  fi
fi
{ sudo_ apt-get update -q && DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -q \
    golang-go etcd-server golang-github-modern-go-reflect2-dev dpkg-dev make rsync jq; } >>"$LOG" 2>&1 \
  || fail "apt-get install"

say "fetch Debian's kubernetes source package"
tree=$(ls -d "$SRC"/kubernetes-*/ 2>/dev/null | head -n1 || true)
if [ -z "$tree" ]; then
  (cd "$SRC" && apt-get source -q kubernetes) >>"$LOG" 2>&1 || fail "apt-get source kubernetes"
  tree=$(ls -d "$SRC"/kubernetes-*/ | head -n1)
fi
tree=${tree%/}

say "replace vendored reflect2 1.0.1 (segfaults with Go >= 1.18) with Debian's 1.0.2"
r2=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -d "$r2" ] || fail "reflect2 sources missing at $r2"
rm -rf "$tree/vendor/github.com/modern-go/reflect2"
cp -r "$r2" "$tree/vendor/github.com/modern-go/reflect2"

say "compile $WANT (about 5 minutes on 2 cores cold, 1 minute with a warm Go cache)"
kiln_go_make "$tree" "$LOG" clean $WANT || fail "go build"

say "install binaries into $BIN"
for b in $WANT; do cp "$tree/_output/bin/$b" "$BIN/$b"; done
echo "[kiln] done: $(ls "$BIN" | tr '\n' ' ')"
