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
    if args.command == "up":
        cluster.up(operator=not args.no_operator)
    elif args.command == "down":
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
