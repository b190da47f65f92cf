"""The strings both halves of a federated run must agree on, written down once.

The agent writes a SuperNode's ``node_config`` (:mod:`edgefleet.agent.fl.supernode`), its
ClientApp reports part of it as facts and reads the rest (:mod:`edgefleet.agent.fl.clientapp`),
and the ServerApp selects on the facts and talks to the ClientApp in Flower messages
(:mod:`edgefleet.flower.serverapp`). The agent must never import the coordinator side and the
coordinator side must not reach into the agent, so the keys, the record names, the Flower
process environment and the digits split seed live here, in shared code both may import.

Pure standard library: the ClientApp imports this in every per-message process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DIGITS_SPLIT_SEED",
    "FACT_KEYS",
    "FAST_POLL_ENV",
    "LM_BASE_NEEDED",
    "LORA_ARCH",
    "MAINS_BATTERY",
    "Metric",
    "Node",
    "NodeFacts",
    "Record",
    "TrainConfig",
    "format_labels",
    "parse_labels",
]

#: SuperExec polls for ClientApp tasks every 1 s by default; 50 ms costs nothing measurable.
#: Telemetry off: a fleet's Flower processes make no calls home. Used for SuperLink and
#: SuperNodes alike.
FAST_POLL_ENV: Final[Mapping[str, str]] = {
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05",
    "FLWR_TELEMETRY_ENABLED": "0",
}

#: The seed of the digits split: the coordinator trains, calibrates and tests on 60 % of
#: scikit-learn's digits; devices partition the other 40 % with the same split, so what a device
#: replays or fine-tunes on is never in the coordinator's training data.
DIGITS_SPLIT_SEED: Final = 20240601

#: A device that reports no battery is mains-powered: selection treats it as full.
MAINS_BATTERY: Final = 100.0

#: The ``arch`` of a federated LoRA run of the byte-level LM: the run's global model is the
#: adapters only, the frozen base stays on the devices (``edgefleet.agent.fl.lora_client``)
LORA_ARCH: Final = "byte-lm-lora"

#: the phrase a device's error carries when it lacks the run's LoRA base (the base sent did
#: not match, or its cache has none): the ServerApp sends the base to that device again
LM_BASE_NEEDED: Final = "lm-base-needed"


class Node:
    """Keys of a SuperNode's ``node_config`` (``flower-supernode --node-config``)."""

    DEVICE_ID: Final = "device-id"
    PROFILE: Final = "profile"
    RAM_BYTES: Final = "ram-bytes"
    BATTERY: Final = "battery"
    HEALTH: Final = "health"
    LABELS: Final = "labels"
    WIDTH: Final = "width"
    RUNTIME: Final = "runtime"
    #: ``"agent"`` when the agent hosts the SuperNode for a microcontroller
    PROXY: Final = "proxy"
    # -- read by the ClientApp only, never reported as facts --
    DATA_PATH: Final = "data-path"
    #: a JSON file the agent rewrites with live facts (battery, health)
    STATUS_PATH: Final = "status-path"
    PARTITION_ID: Final = "partition-id"
    NUM_PARTITIONS: Final = "num-partitions"
    BUDGET_FRACTION: Final = "budget-fraction"
    #: seconds a simulated slow device waits before replying to a train message (benchmarks
    #: and tests of asynchronous rounds; never set on a real device)
    SIM_DELAY: Final = "sim-delay"
    #: where this device keeps the base LM a LoRA run's adapters belong to (``LORA_ARCH``)
    LM_BASE_PATH: Final = "lm-base-path"
    #: the device's cache of base LMs received by message (``<sha256>.safetensors``); a device
    #: with one tells the query which run base it lacks, and gets it in its first train message
    LM_BASE_DIR: Final = "lm-base-dir"
    #: the Unix socket of the device's long-lived training worker (``unix:`` path, no prefix;
    #: ``edgefleet.agent.fl.train_worker``): conv nets train there instead of paying torch's
    #: import in every per-message ClientApp process; unset or silent = in-process training
    TRAIN_WORKER: Final = "train-worker"
    #: true to train the zoo ``mlp`` through the worker (torch) instead of the ClientApp's
    #: numpy MLP (benchmarks/fl_worker.py compares the two)
    MLP_IN_WORKER: Final = "mlp-in-worker"


#: What the ClientApp's ``query`` reply reports (and the live status file may refresh).
FACT_KEYS: Final[tuple[str, ...]] = (
    Node.DEVICE_ID, Node.PROFILE, Node.RAM_BYTES, Node.BATTERY, Node.HEALTH, Node.LABELS,
    Node.WIDTH, Node.RUNTIME, Node.PROXY,
)  # fmt: skip


class Record:
    """Names of the records inside a Flower message's ``RecordDict``."""

    ARRAYS: Final = "arrays"  # ArrayRecord: the model (slice) sent, the update returned
    CONFIG: Final = "config"  # ConfigRecord: TrainConfig keys
    METRICS: Final = "metrics"  # MetricRecord: Metric keys
    FACTS: Final = "facts"  # ConfigRecord: the query reply, FACT_KEYS
    #: ArrayRecord: a LoRA run's frozen base, in the first train message of a device that
    #: lacks it; ConfigRecord of the same name in the query: the run's base ``sha256`` and,
    #: to size a round, ``weights`` (base + adapter parameters), ``adapters`` and ``base``
    #: (the ByteLM config, JSON)
    LM_BASE: Final = "lm-base"
    #: the query reply's key (in FACTS) for that base: ``held`` or ``missing``
    LM_BASE_STATE: Final = "lm-base-state"
    #: the query reply's key (in FACTS) when the device cannot fine-tune the run's LoRA in
    #: its memory budget even at batch 1: why, in one line (absent: it can)
    LM_LORA_UNFIT: Final = "lm-lora-unfit"


class TrainConfig:
    """Keys of the ``config`` record the ServerApp sends with train and evaluate messages."""

    ARCH: Final = "arch"
    #: JSON of the zoo config at the width this node trains (a HeteroFL slice or the full model)
    ARCH_CONFIG: Final = "arch-config"
    LR: Final = "lr"
    LOCAL_EPOCHS: Final = "local-epochs"
    BATCH_SIZE: Final = "batch-size"
    SERVER_ROUND: Final = "server-round"  # Flower's strategies set it too
    PROXIMAL_MU: Final = "proximal-mu"  # Flower's FedProx sets it too
    #: JSON of the model's signal frontend (``FrontendSpec.to_dict()``) when the devices' local
    #: data is raw audio: each device computes the features itself, as it does when serving
    FRONTEND: Final = "frontend"
    #: how the device encodes its reply (:mod:`edgefleet.fl.update_codec`): ``none`` sends the
    #: fine-tuned model, anything else an encoded delta from the model received
    UPDATE_CODEC: Final = "update-codec"
    #: true when the server aggregates each tensor over the replies that hold it: a device
    #: that trained a light scope (TinyTL, sparse, head) then replies with those tensors only;
    #: otherwise it replies with the whole model (the rest as received)
    PARTIAL_UPDATES: Final = "partial-updates"


class Metric:
    """Keys of the ``metrics`` record a ClientApp replies with."""

    #: the weight of a train reply (Flower's strategies' ``weighted_by_key``) and of an
    #: evaluate reply
    NUM_EXAMPLES: Final = "num-examples"
    TRAIN_LOSS: Final = "train-loss"
    #: the received global model, scored on the held-out data before fine-tuning
    EVAL_LOSS: Final = "eval-loss"
    EVAL_ACC: Final = "eval-acc"
    #: the fine-tuned local model on the same data
    LOCAL_EVAL_LOSS: Final = "local-eval-loss"
    LOCAL_EVAL_ACC: Final = "local-eval-acc"
    EVAL_EXAMPLES: Final = "eval-examples"
    BATCH_SIZE: Final = "batch-size"  # after shrinking to the memory budget
    #: parameters the device's update trained: fewer than the model's when its memory budget
    #: chose a light scope (TinyTL, sparse, head)
    TRAINED_PARAMS: Final = "trained-params"
    CLIENT_SECONDS: Final = "client-seconds"
    #: L2 norm of the error-feedback residual the device carried into this update (0 on its
    #: first round, or with ``update-codec none``)
    CODEC_RESIDUAL: Final = "codec-residual"


def format_labels(labels: Mapping[str, str]) -> str:
    """``{"site": "lab"}`` as the ``site=lab,...`` a node_config value can hold."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def parse_labels(text: object) -> dict[str, str]:
    """The inverse of :func:`format_labels` (pairs without ``=`` are ignored)."""
    pairs = (p.split("=", 1) for p in str(text or "").split(",") if "=" in p)
    return {k.strip(): v.strip() for k, v in pairs}


@dataclass(frozen=True)
class NodeFacts:
    """A device as participant selection sees it: what its node_config (and status) say.

    The agent builds one into the SuperNode's node_config (:meth:`to_node_config`); the
    ServerApp reads the ClientApp's query reply back (:meth:`from_node_config`) and selects on
    :meth:`selection_view`.
    """

    device: str
    profile: str = ""
    ram: int = 0
    battery: float | None = None  # None: mains-powered
    health: str = "ok"
    labels: Mapping[str, str] = field(default_factory=dict)
    width: float | None = None  # a forced HeteroFL width (None: picked from the RAM budget)
    runtime: str = ""
    proxy: str = ""

    def to_node_config(self) -> dict[str, object]:
        """The fact keys of a node_config (unset optional facts are left out)."""
        cfg: dict[str, object] = {
            Node.DEVICE_ID: self.device,
            Node.PROFILE: self.profile,
            Node.RAM_BYTES: int(self.ram),
            Node.HEALTH: self.health,
        }
        if self.battery is not None:
            cfg[Node.BATTERY] = float(self.battery)
        if self.labels:
            cfg[Node.LABELS] = format_labels(self.labels)
        if self.width is not None:
            cfg[Node.WIDTH] = float(self.width)
        if self.runtime:
            cfg[Node.RUNTIME] = self.runtime
        if self.proxy:
            cfg[Node.PROXY] = self.proxy
        return cfg

    @classmethod
    def from_node_config(cls, raw: Mapping[str, Any]) -> NodeFacts:
        """Read reported facts (a node_config or a query reply; other keys are ignored)."""
        return cls(
            device=str(raw.get(Node.DEVICE_ID, "")),
            profile=str(raw.get(Node.PROFILE, "")),
            ram=int(float(raw.get(Node.RAM_BYTES, 0) or 0)),
            battery=float(raw[Node.BATTERY]) if Node.BATTERY in raw else None,
            health=str(raw.get(Node.HEALTH, "ok")),
            labels=parse_labels(raw.get(Node.LABELS)),
            width=float(raw[Node.WIDTH]) if Node.WIDTH in raw else None,
            runtime=str(raw.get(Node.RUNTIME, "")),
            proxy=str(raw.get(Node.PROXY, "")),
        )

    def selection_view(self) -> dict[str, Any]:
        """The selection vocabulary (:mod:`edgefleet.selectors` fields)."""
        return {
            "device": self.device,
            "profile": self.profile,
            "ram": float(self.ram),
            "battery": MAINS_BATTERY if self.battery is None else float(self.battery),
            "health": self.health,
            "labels": dict(self.labels),
            "width": self.width,
            "runtime": self.runtime,
            "proxy": self.proxy,
        }
