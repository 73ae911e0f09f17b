"""Bring-your-own https artifacts are fetched on the event loop, never in a reconcile worker (issue #11, item 3).

Real HTTPS servers on loopback (the fixtures of test_fetch); kiln_operator.downloads with a fetch that trusts
their certificate and allows 127.0.0.1, as production passes nothing of the kind.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time

from test_fetch import DNS, LOOPBACK, cert, reply, serve, trust  # noqa: F401 - pytest fixtures

from kiln_contract import fetch as remote
from kiln_operator import downloads, models
from kiln_operator.reconcile import Result
from kiln_operator.world import ModelWorld


def drip(conn, request):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(200):
        conn.sendall(b"x")
        time.sleep(0.05)


def fetcher(trust, **limits):  # noqa: F811 - the fixture's value
    return functools.partial(remote.fetch_to_file, ssl_context=trust, allow_networks=LOOPBACK,
                             resolver=DNS(["127.0.0.1"]), **limits)


def test_eight_drips_hold_no_thread_and_end_at_their_deadline(serve, trust, tmp_path):  # noqa: F811
    """The audit's reproduction: eight dripping URLs. The loop stays free, a good URL is not starved beyond
    the concurrency cap, and every drip ends with an error at its deadline, its owner queued again."""
    slow, good = serve(drip), serve(reply(b"model-bytes"))
    good_sha = hashlib.sha256(b"model-bytes").hexdigest()
    queued: list = []

    async def scenario():
        dl = downloads.Downloads(4, queued.append, tmp_path, fetch=fetcher(trust, deadline=1.0, read_timeout=5))
        for i in range(8):
            dl.want(("Model", "ns", f"m{i}"), f"https://data.test:{slow.port}/d{i}.onnx", "a" * 64)
        dl.want(("Model", "ns", "good"), f"https://data.test:{good.port}/m.onnx", good_sha)
        ticks, started = 0, time.monotonic()
        while len(queued) < 9 and time.monotonic() - started < 10:
            await asyncio.sleep(0.01)  # the loop keeps turning while the drips run
            ticks += 1
        done = dl.finished()
        await dl.stop()
        return done, ticks, time.monotonic() - started

    done, ticks, took = asyncio.run(scenario())
    assert sorted(k[2] for k in queued) == sorted([f"m{i}" for i in range(8)] + ["good"])
    errors = [d.error for (uri, _), d in done.items() if not uri.endswith("/m.onnx")]
    assert len(errors) == 8 and all("deadline" in e for e in errors)
    good_dl = done[(f"https://data.test:{good.port}/m.onnx", good_sha)]
    assert good_dl.error is None and good_dl.path.name and not good_dl.path.exists()  # stop() removed the dir
    assert ticks > 100 and took < 6  # four at a time, 1 s each: two rounds, never blocking the loop


def test_a_model_asks_for_the_download_and_reserves_nothing_until_it_is_there(monkeypatch):
    entry = {"uri": "https://data.example/m.onnx", "sha256": "b" * 64}
    model = {"metadata": {"name": "byo", "namespace": "ns", "uid": "u", "resourceVersion": "1", "generation": 1},
             "spec": {"versions": [entry]}, "status": {}}
    calls: list = []
    monkeypatch.setattr(models, "reserve", lambda *a, **k: calls.append("reserve") or 1)
    monkeypatch.setattr(models, "fail_version", lambda m, v, reason, users, written: calls.append(reason))

    out = Result()
    models._external(model, 0, entry, "s3://kiln/models/ns", ModelWorld(model, [], True), out)
    assert out.downloads == [("https://data.example/m.onnx", "b" * 64)]
    assert calls == [] and out.downloaded == []  # no version reserved for a download that may never end

    failed = downloads.Download(error="cannot fetch https://data.example/m.onnx: connection failed")
    world = ModelWorld(model, [], True, downloads={("https://data.example/m.onnx", "b" * 64): failed})
    out = Result()
    models._external(model, 0, entry, "s3://kiln/models/ns", world, out)
    assert calls == ["reserve", "spec.versions[0]: cannot fetch https://data.example/m.onnx: connection failed"]
    assert out.downloaded == [("https://data.example/m.onnx", "b" * 64)] and out.downloads == []
