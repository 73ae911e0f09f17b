"""`python -m kiln_local up|down|status|env` — the local Kiln cluster."""

import argparse
import sys

from kiln_local import cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln-local", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (or complete) the local cluster")
    up.add_argument("--no-operator", action="store_true",
                    help="leave the operator and the gateway out (run them yourself)")
    sub.add_parser("down", help="stop every process the cluster started")
    sub.add_parser("status", help="list the cluster's processes")
    sub.add_parser("env", help="print shell exports for KUBECONFIG and S3")
    args = parser.parse_args(argv)
    if args.command in ("up", "down"):
        # Two `up`s at once would each start a controller-manager and a scheduler (leader election is off):
        # duplicate pods for every Job. The second waits for the first, then finds everything running.
        import fcntl

        from kiln_local.paths import STATE

        STATE.mkdir(parents=True, exist_ok=True)
        with open(STATE / "cluster.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if args.command == "up":
                cluster.up(operator=not args.no_operator)
            else:
                cluster.down()
    elif args.command == "status":
        return cluster.status()
    elif args.command == "env":
        for k, v in cluster.environ().items():
            if k != "PATH":
                print(f"export {k}={v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
