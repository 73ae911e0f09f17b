"""`python -m kiln_operator.gateway`: the gateway/activator process (settings from the environment, see config.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from kiln_operator.gateway import app, config


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"message": record.getMessage(), "timestamp": self.formatTime(record),
               "severity": record.levelname.lower(), "logger": record.name}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _logging(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def main() -> int:
    from prometheus_client import disable_created_metrics

    disable_created_metrics()  # *_created series double what Prometheus stores and nothing here reads them
    settings = config.load()
    _logging(settings.log_format)
    try:
        import uvloop
    except ImportError:  # a slower loop, not a broken gateway
        logging.getLogger("kiln.gateway").warning("uvloop is not installed: running on asyncio's own event loop")
        asyncio.run(app.run(settings))
    else:
        uvloop.run(app.run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
