"""The federated step of ``make demo``: two rounds on four simulated devices, accuracy before/after.

Same code path as ``edgefleet train start --local 4``: a real SuperLink and four real SuperNodes
on loopback (``LocalFederation``), each with a non-IID digits shard, running our ServerApp and
ClientApp. The global model starts from an MLP trained on a small biased subset (a few samples
of five classes), so the held-out accuracy it starts at is low and what two rounds of the
devices' own data add is visible; from a random init the gain would be as large but say less.

The fleet is mixed (an SBC, a phone, a Pi Zero and a Cortex-M7) and aggregated with HeteroFL,
so a device whose budget cannot hold the full model trains a width slice (``devices`` in the
result says which). Kept fast on purpose (the demo is interactive): evaluation folded into the
train reply, no final client evaluation, the fast SuperExec poll, and the base model trained
while the federation starts.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.fl.supernode import FAST_POLL_ENV
from coordinator.fl.local import LocalFederation, pretrain_biased, wait_progress

__all__ = ["DEMO_PROFILES", "FederatedStep", "federated_step"]

DEMO_PROFILES = ("rpi4", "phone-flagship", "rpi-zero2w", "cortex-m7")
#: Local training is milliseconds per epoch on a shard (numpy MLP) while a round costs seconds of
#: Flower overhead, so more local epochs buy accuracy for free: with 1 the two rounds barely move
#: the biased base (45.0% -> 46.1% measured), with 5 they take it to ~76%.
LOCAL_EPOCHS = 5


@dataclass(frozen=True)
class FederatedStep:
    """What the demo prints: global held-out accuracy before and after, and each round."""

    acc_before: float
    acc_after: float
    seconds: float
    #: "device-id (profile)" -> the model width it trained
    devices: dict[str, float] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary, one line per round plus the before/after line."""
        out = []
        for r in self.rounds:
            acc = r.get("test_acc")
            out.append(
                f"round {r['round']}: {len(r['participants'])} device(s), "
                f"test acc {'-' if acc is None else f'{100 * acc:.1f}%'}, {r['seconds']:.1f}s"
            )
        out.append(
            f"federated fine-tuning: test accuracy {100 * self.acc_before:.1f}% -> "
            f"{100 * self.acc_after:.1f}% in {len(self.rounds)} rounds on "
            f"{len(self.devices)} devices ({self.seconds:.1f}s)"
        )
        return out


def federated_step(
    root: Path | None = None,
    *,
    devices: int = 4,
    rounds: int = 2,
    strategy: str = "heterofl",
    seed: int = 0,
    timeout: float = 180.0,
) -> FederatedStep:
    """Run ``rounds`` federated rounds on ``devices`` loopback devices; return before/after.

    ``root`` keeps the federation's files (shards, run record, logs) for inspection; by default
    they go to a temporary directory removed afterwards. Raises ``RuntimeError`` with the
    ServerApp's reason if the run fails, ``TimeoutError`` if it does not finish in ``timeout``.
    """
    if root is None:
        with tempfile.TemporaryDirectory(prefix="edgefleet-fl-demo-") as tmp:
            return federated_step(
                Path(tmp), devices=devices, rounds=rounds, strategy=strategy, seed=seed,
                timeout=timeout,
            )  # fmt: skip
    t0 = time.monotonic()
    fed = LocalFederation(
        root / "federation", num_nodes=devices, profiles=DEMO_PROFILES, alpha=0.5, seed=seed,
        env=dict(FAST_POLL_ENV),
    )  # fmt: skip
    # The base model trains (torch import included, ~2 s) while the SuperLink and SuperNodes
    # start: both are needed before the run is submitted, and neither needs the other.
    # (Not ``with fed:`` -- that would start the federation a second time.)
    with ThreadPoolExecutor(1) as pool:
        init_future = pool.submit(pretrain_biased, "mlp", root / "init.npz", seed)
        fed.start()
        try:
            init = init_future.result()
            out = fed.run(
                {"num-rounds": rounds, "strategy": strategy, "min-devices": devices,
                 "init-path": str(init), "local-epochs": LOCAL_EPOCHS, "lr": 0.05, "seed": seed,
                 "final-evaluate": False},
                name="demo",
            )  # fmt: skip
            doc = wait_progress(out, timeout=timeout)
        finally:
            fed.stop()
    if doc["state"] != "succeeded":
        raise RuntimeError(f"federated demo step {doc['state']}: {doc.get('reason')}")
    return FederatedStep(
        acc_before=float(doc["initial"]["test_acc"]),
        acc_after=float(doc["final"]["test_acc"]),
        seconds=time.monotonic() - t0,
        devices={
            f"{d['device']} ({d['profile']})": float(d["width"])
            for d in doc["devices"].values()
            if d["selected"]
        },
        rounds=list(doc["rounds"]),
    )


if __name__ == "__main__":
    for line in federated_step().lines():
        print(line)
