"""``train start``, step 3 of 4: follow the run (and read run records for ``train ls|status``).

The ServerApp writes the run's record (``progress.json``) after every round; following is
reading it until the run finishes, printing each new round and handing it to a reporter (which
records it in the fleet's state, see ``train_cmds``). Following never changes a run's outcome:
it only reads, so ``train status --watch`` uses the same loop on any run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgefleet.cli.common import err_console, fail, out

if TYPE_CHECKING:
    from edgefleet.cli.train_submit import Submission
    from edgefleet.cli.train_validate import RunPlan


class RoundReporter(Protocol):
    """Takes each batch of finished rounds (and whether the run failed), then drains at the end."""

    def __call__(self, new: list[dict[str, Any]], failed: bool) -> None: ...

    def drain(self) -> None: ...


def follow(plan: RunPlan, submission: Submission, reporter: RoundReporter | None) -> dict[str, Any]:
    """Follow the submitted run to its end (or ``--timeout``); return its finished record."""
    if not plan.options.as_json:
        err_console.print(
            f"run {plan.run_name} (Flower run {submission.run_id}) on {submission.address}"
        )
    doc = follow_rounds(plan.run_dir, plan.options.as_json, plan.options.timeout, reporter)
    if reporter is not None:
        reporter.drain()
    return doc


def follow_rounds(
    run_dir: Path,
    as_json: bool,
    timeout: float,
    report: Callable[[list[dict[str, Any]], bool], None] | None = None,
) -> dict[str, Any]:
    """Print each round as the ServerApp records it; return the finished record."""
    shown = 0
    deadline = time.monotonic() + timeout
    while True:
        doc = load_record(run_dir)
        rounds = doc.get("rounds", [])
        total = int(doc.get("settings", {}).get("num_rounds", len(rounds)))
        for r in rounds[shown:]:
            if not as_json:
                out.print(round_line(r, total, is_lora(doc)), highlight=False)
        finished = doc["state"] not in ("running", "submitted")
        if report is not None and (rounds[shown:] or finished):
            report(rounds[shown:], finished and doc["state"] != "succeeded")
        shown = len(rounds)
        if finished:
            return doc
        if time.monotonic() > deadline:
            raise fail(f"run {run_dir.name} still {doc['state']} after {timeout:.0f}s")
        time.sleep(0.25)


def load_record(run_dir: Path) -> dict[str, Any]:
    """A run's record: its meta (``meta.json``) under the ServerApp's progress, with its state."""
    meta = (
        json.loads((run_dir / "meta.json").read_text()) if (run_dir / "meta.json").exists() else {}
    )
    progress = run_dir / "progress.json"
    doc: dict[str, Any] = json.loads(progress.read_text()) if progress.exists() else {}
    state = doc.get("state", meta.get("state", "submitted"))
    if meta.get("state") == "stopped":
        state = "stopped"
    reason = doc.get("reason")
    if state == "running" and not _alive(doc.get("pid")):
        # The ServerApp died without recording an outcome (SuperLink/host restart, kill -9):
        # say so rather than showing "running" forever. Resuming is not implemented.
        state, reason = "failed", "the ServerApp process is gone (SuperLink restarted or killed)"
    return {"name": run_dir.name, **meta, **doc, "state": state, "reason": reason}


def _alive(pid: object) -> bool:
    """Whether the ServerApp process that wrote the record still runs (same host only)."""
    from edgefleet.fl.process import pid_alive

    return pid_alive(pid) if isinstance(pid, int) else True  # unknown: trust the record


def is_lora(doc: dict[str, Any]) -> bool:
    """Whether a run record is a federated LoRA run of a language model."""
    from edgefleet.fl.contract import LORA_ARCH

    return str((doc.get("settings") or {}).get("arch") or doc.get("arch") or "") == LORA_ARCH


def mean_perplexity(device_eval_loss: dict[str, Any] | None) -> float | None:
    """The mean over devices of each one's held-out perplexity (e^loss, per byte), or None."""
    losses = [float(v) for v in (device_eval_loss or {}).values() if v is not None]
    return sum(math.exp(v) for v in losses) / len(losses) if losses else None


def round_line(r: dict[str, Any], total: int, lora: bool = False) -> str:
    """One line per finished round, as `train start` and `train status` print it.

    A LoRA round says held-out perplexity instead of accuracy: the mean over its devices of
    each one's perplexity on its own held-out text, scored on the adapters the round started
    from (round 1: the base), before the round's training.
    """

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    loss = "-" if r.get("train_loss") is None else f"{r['train_loss']:.3f}"
    failed = int(r.get("failed") or 0)  # devices whose update failed (`train simulate` too)
    devices = f"{len(r['participants'])} device(s)" + (f" ({failed} failed)" if failed else "")
    if lora:
        ppl = mean_perplexity(r.get("device_eval_loss"))
        return (
            f"round {r['round']}/{total}: {devices}, loss {loss}, "
            f"held-out perplexity {'-' if ppl is None else f'{ppl:.3f}'} at the round's start, "
            f"{r['seconds']:.1f}s"
        )
    return (
        f"round {r['round']}/{total}: {devices}, loss {loss}, "
        f"client acc {pct(r.get('client_eval_acc'))}, test acc {pct(r.get('test_acc'))}, "
        f"{r['seconds']:.1f}s"
    )


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` view of a run's record (a LoRA run's adds ``perplexity``)."""
    view = {
        "name": doc["name"],
        "state": doc["state"],
        "reason": doc.get("reason"),
        "superlink": doc.get("superlink"),
        "flwr_run_id": doc.get("flwr_run_id"),
        "strategy": doc.get("settings", {}).get("strategy"),
        "model": doc.get("settings", {}).get("arch"),
        "rounds": doc.get("rounds", []),
        "initial": doc.get("initial"),
        "final": doc.get("final"),
    }
    if is_lora(doc):
        view["perplexity"] = perplexity_curve(doc)
    return view


def perplexity_curve(doc: dict[str, Any]) -> dict[str, Any]:
    """A LoRA run's held-out perplexity: the mean over devices at each round's start (round 1:
    the base), after the last round, and per device (start -> end)."""
    rounds = list(doc.get("rounds") or [])
    final = (doc.get("final") or {}).get("device_eval_loss") or {}
    first = rounds[0].get("device_eval_loss") or {} if rounds else {}
    return {
        "at_round_start": [mean_perplexity(r.get("device_eval_loss")) for r in rounds],
        "initial": mean_perplexity(first),
        "final": mean_perplexity(final),
        "per_device": {
            d: {"initial": math.exp(first[d]) if d in first else None, "final": math.exp(v)}
            for d, v in sorted(final.items())
            if v is not None
        },
    }


def list_runs(runs_dir: Path) -> list[Path]:
    return sorted(p for p in runs_dir.glob("*") if (p / "meta.json").exists())
