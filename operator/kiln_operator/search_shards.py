"""A hyperparameter search across pods: which shard Jobs to create, when the search is done, what
status shows. Pure: takes the run's status and the observed shard Jobs and pods, returns a decision.

A run whose spec.search has parallelism > 1 (grid or random) is split into `shards` shards
(kiln_contract.search_plan): one batch/v1 Job per shard, `<trainingjob>-v<N>-s<k>`, at most
`parallelism` of them unfinished at once, each with spec.retries as its backoffLimit (a failed pod
retries its shard only; the trainer skips the candidates whose results are already written). When
every shard has succeeded, the training Job `<trainingjob>-v<N>` starts with the results and
fits the best candidate. A shard that fails for good fails the run.

Why one Job per shard rather than one Indexed Job: the local cluster's Kubernetes 1.20 has no
Indexed Jobs (completionMode is 1.21 alpha; its API server drops the field), and per-index retry
limits (backoffLimitPerIndex) came only in 1.28/1.29. Jobs per shard work on every version and
give each shard its own retries. The trainer also reads JOB_COMPLETION_INDEX, so an Indexed Job
can replace them without a trainer change.

Progress comes from the shards' termination messages (each shard's count and best candidate), read
when a shard's pod or Job changes — the watch events, no polling: `status.search` holds candidates,
done, the shards completed and the best score and params so far; `progress` is what
`kubectl get tj` shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln_contract import search_plan
from kiln_operator import job_outcome, labels


def shard_job_name(training_job: str, version: int, shard: int) -> str:
    return labels.dns_name(training_job, f"v{version}-s{shard}")


def initial(plan: search_plan.Plan) -> dict:
    return {"stage": "shards", "candidates": plan.candidates, "shards": plan.shards,
            "parallelism": plan.parallelism, "completed": [], "done": 0, "bestScore": None, "bestParams": None,
            "bestCandidate": None, "progress": progress_text(0, plan.candidates, None)}


def progress_text(done: int, total: int, best: float | None) -> str:
    text = f"{done}/{total}"
    return f"{text} best={best:.4g}" if best is not None else text


@dataclass
class Decision:
    create: list[int] = field(default_factory=list)  # shards whose Job to create now
    search: dict = field(default_factory=dict)  # the new status.search
    phase: str = "Pending"  # of the run while its shards run
    attempts: int = 0
    failed: job_outcome.Outcome | None = None  # a shard failed for good: the run fails
    failed_shard: int | None = None
    finished: bool = False  # every shard succeeded: start the training Job
    newly_completed: list[int] = field(default_factory=list)


def decide(search: dict, jobs: dict[int, dict | None], pods: dict[int, list[dict]], expected: set[int]) -> Decision:
    """search: the run's status.search; jobs: shard -> observed Job (None when the watch has none);
    pods: shard -> its Job's pods; expected: shards whose Job we created moments ago."""
    total, shards, parallelism = search["candidates"], search["shards"], search["parallelism"]
    state = dict(search)
    completed = set(state.get("completed") or [])
    out = Decision()
    unfinished = 0
    running = False
    best = (state.get("bestScore"), state.get("bestParams"), state.get("bestCandidate"))
    done = int(state.get("done") or 0)
    for k in range(shards):
        if k in completed:
            continue
        job = jobs.get(k)
        if job is None:
            if k in expected:
                unfinished += 1
            continue
        result = job_outcome.outcome(job, pods.get(k) or [])
        out.attempts += result.attempts
        if result.phase == "Succeeded":
            completed.add(k)
            out.newly_completed.append(k)
            info = (result.summary or {}).get("search") or {}
            done += int(info.get("candidates") or len(search_plan.members(k, shards, total)))
            b = info.get("best")
            if b and b.get("score") is not None and (best[0] is None or b["score"] > best[0]
                                                     or (b["score"] == best[0] and b["candidate"] < best[2])):
                best = (b["score"], b.get("params"), b.get("candidate"))
            continue
        if result.phase == "Failed":
            out.failed, out.failed_shard = result, k
            continue
        unfinished += 1
        running = running or result.phase == "Running"
    for k in range(shards):
        if unfinished >= parallelism:
            break
        if k not in completed and jobs.get(k) is None and k not in expected:
            out.create.append(k)
            unfinished += 1
    state.update({"completed": sorted(completed), "done": min(done, total), "bestScore": best[0],
                  "bestParams": best[1], "bestCandidate": best[2],
                  "progress": progress_text(min(done, total), total, best[0])})
    out.finished = len(completed) == shards and out.failed is None
    if out.finished or out.failed is not None:
        out.create = []
    if out.finished:
        state["stage"] = "final"
    out.search = state
    out.phase = "Running" if running or completed else "Pending"
    return out
