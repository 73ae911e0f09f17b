"""The trainer's command line.

    python -m kiln_trainer --spec spec.yaml --output s3://bucket/models/iris/v3
    python -m kiln_trainer --output /tmp/out          # spec as JSON in $KILN_SPEC

Progress goes to stderr; stdout carries exactly one line, the JSON summary (see
kiln_trainer.summary). Exit codes: 0 success (gates may still have failed: see
gatesPassed), 2 bad input or unreachable data (retrying will not help), 1 anything else.

Artifacts are written directly under --output. If --output already holds a committed
version (modelcard.json) trained from the same spec — a pod retried after its upload —
the run reports that version instead of training again; from another spec it refuses,
since a committed version is never overwritten (unless --overwrite).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from kiln_contract import card as contract_card
from kiln_trainer import modelcard, publish, shards, specfile, summary, training
from kiln_trainer.errors import BadInput, TrainerError

log = logging.getLogger("kiln_trainer")

OUTPUT_ENV = "KILN_OUTPUT"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kiln_trainer", description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", help=f"TrainingJob manifest or bare spec, YAML or JSON (default: ${specfile.SPEC_ENV})")
    p.add_argument("--output", default=os.environ.get(OUTPUT_ENV),
                   help=f"s3://bucket/prefix or a local directory (default: ${OUTPUT_ENV})")
    p.add_argument("--overwrite", action="store_true", help="retrain even if --output holds a committed version")
    p.add_argument("--log-level", default=os.environ.get("KILN_LOG_LEVEL", "INFO"))
    return p


def _reuse(existing: bytes, spec: dict, output_uri: str) -> dict:
    try:
        card = contract_card.loads(existing)
    except contract_card.CardError as exc:
        raise BadInput("--output", f"holds an unreadable modelcard.json ({exc}); pass --overwrite") from exc
    if card.get("spec") != modelcard.jsonable(spec):
        raise BadInput("--output", f"{output_uri} already holds a version trained from another spec")
    log.info("%s already holds this run's committed version; not training again", output_uri)
    return summary.succeeded(card, output_uri, {"reused": True})


def run(args) -> dict:
    started = time.monotonic()
    spec = specfile.validate(specfile.load(args.spec))
    if not args.output:
        raise BadInput("--output", f"required (or set ${OUTPUT_ENV})")
    if shards.shard() is not None:  # a shard pod of a search across pods: evaluate its candidates, train nothing
        return shards.run_shard(spec, training.train)
    output = publish.open_output(args.output)
    if not args.overwrite:
        existing = output.existing_card()
        if existing is not None:
            return _reuse(existing, spec, output.uri)
    with tempfile.TemporaryDirectory(prefix="kiln-train-") as tmp:
        staging = Path(tmp)
        result = training.train(spec, staging)
        timings = result.card["timings"]

        def card_bytes(upload_seconds: float) -> bytes:
            timings["upload"] = round(upload_seconds, 4)
            timings["total"] = round(time.monotonic() - started, 4)
            return modelcard.encode(result.card)

        publish.publish(output, staging, result.files, card_bytes)
    durations = {**timings, "total": round(time.monotonic() - started, 4)}
    return summary.succeeded(result.card, output.uri, durations)


class Terminated(BaseException):
    """SIGTERM: the Job's deadline passed or the pod is being deleted. A BaseException, so that
    no `except Exception` on the way (scikit-learn's search records failed fits and goes on)
    swallows it."""

    reason = "Error"
    exit_code = 1


def _on_sigterm(signum, frame):
    raise Terminated("terminated by SIGTERM (deadline passed or pod deleted)")


def main(argv: list[str] | None = None, stdout=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = stdout or sys.stdout
    previous = None
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    code = 0
    try:
        # Libraries that print would break the one-line contract of stdout: send them to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            line = run(args)
    except (TrainerError, Terminated) as exc:
        log.error("%s: %s", exc.reason, exc)
        line, code = summary.failed(exc.reason, str(exc)), exc.exit_code
    except Exception as exc:  # the summary must be written whatever happened
        log.exception("training failed")
        line, code = summary.failed("Error", f"{type(exc).__name__}: {exc}"), 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    summary.emit(line, out)
    return code
