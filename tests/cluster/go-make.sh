# Sourced by build-binaries.sh and build-node.sh: compile commands of Debian's Kubernetes source tree.
#   kiln_go_make TREE LOG clean|keep NAME...   builds cmd/NAME... into TREE/_output/bin (output to LOG),
# printing progress every 30 s; returns make's status. "clean" first removes _output (a failed earlier build
# leaves empty tool binaries behind); "keep" reuses what an earlier build made there.
kiln_go_make() {
  local tree=$1 log=$2 mode=$3; shift 3
  local whats="" b
  for b in "$@"; do whats="$whats cmd/$b"; done
  (
    cd "$tree"
    export GOPATH=$tree/.go CGO_ENABLED=0 PATH=/usr/lib/go/bin:$PATH
    [ "$mode" = clean ] && rm -rf _output
    mkdir -p .go/src/k8s.io
    [ -L .go/src/k8s.io/kubernetes ] || ln -s ../../.. .go/src/k8s.io/kubernetes
    make WHAT="${whats# }"
  ) >>"$log" 2>&1 &
  local bpid=$! start
  start=$(date +%s)
  while kill -0 $bpid 2>/dev/null; do
    sleep 30
    kill -0 $bpid 2>/dev/null && echo "[kiln]   compiling… $(( $(date +%s) - start ))s (log: $log)"
  done
  wait $bpid
}
