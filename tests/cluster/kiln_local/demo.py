"""`make demo`: show the Kiln API on the local cluster."""

from __future__ import annotations

import sys

from kiln_local.cluster import kubectl


def show(*args: str) -> None:
    print(f"\n$ kubectl {' '.join(args)}", flush=True)
    out = kubectl(*args, check=False)
    sys.stdout.write(out.stdout or out.stderr)


def main() -> int:
    show("get", "nodes", "-o", "wide")
    show("api-resources", "--api-group=kiln.dev")
    show("get", "kiln", "--all-namespaces")
    show("explain", "trainingjob.spec.split")
    return 0


if __name__ == "__main__":
    sys.exit(main())
