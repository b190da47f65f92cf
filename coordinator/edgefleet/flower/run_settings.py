"""A federated run's settings (the ServerApp's run config), typed and checked in one place.

Apart from :mod:`edgefleet.flower.serverapp` so every round shape (the sync loop, FedBuff,
SecAgg+) and the coordinator's validation read the same definition without an import circle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.fl.budget import DEFAULT_RAM_FRACTION
from edgefleet.fl.update_codec import parse_codec
from edgefleet.selectors import parse_selection

__all__ = ["STRATEGIES", "RunSettings"]

STRATEGIES = ("fedavg", "fedprox", "heterofl", "fedbuff")


@dataclass
class RunSettings:
    """The run config (``[tool.flwr.app.config]`` / ``flwr run --run-config``), typed."""

    num_rounds: int = 3
    strategy: str = "fedavg"
    min_devices: int = 2
    select: str = ""
    arch: str = "mlp"
    arch_config: str = ""
    #: the model's signal frontend as JSON: devices hold raw audio and compute features
    frontend: str = ""
    init_path: str = ""
    test_path: str = ""
    out_dir: str = ""
    #: the fleet's Redis and the run's name there: the record is also written to the fleet
    #: state (``edgefleet.flower.run_store``), readable from any host and replica
    redis_url: str = ""
    run_name: str = ""
    #: when the run succeeds, register its weights as this model (``flower.run_publish``) in
    #: the variant store at ``store_dir`` / shared through ``store_redis``, signed with
    #: ``signing_key``
    register_model: str = ""
    store_dir: str = ""
    store_redis: str = ""
    signing_key: str = ""
    lr: float = 0.05
    local_epochs: int = 1
    batch_size: int = 32
    proximal_mu: float = 0.01
    fraction_train: float = 1.0
    poll_interval: float = 0.05
    round_timeout: float = 120.0
    node_wait_timeout: float = 60.0
    budget_fraction: float = DEFAULT_RAM_FRACTION  # the ClientApp's and fine-tuning's too
    dp: str = "none"
    dp_noise: float = 0.0
    dp_clip: float = 10.0
    final_evaluate: bool = True
    seed: int = 0
    #: fedbuff: aggregate every ``buffer`` arrivals; drop updates staler than ``max_staleness``
    buffer: int = 4
    max_staleness: int = 4
    #: fedbuff's server step on the buffer's mean delta: several buffers are applied while
    #: the slow devices' updates still build on older versions, so a full step overshoots
    server_lr: float = 0.5
    #: how devices encode their updates (:mod:`edgefleet.fl.update_codec`)
    update_codec: str = "none"
    #: Flower's SecAgg+ for every round: the server sees only the sum of the devices' models
    secure_agg: bool = False
    #: under SecAgg+, light-scope devices send the fixed layout whose tensors are averaged
    #: over the devices that trained them (``flower.secagg``); off: whole models (benchmarks)
    secure_agg_partial: bool = True

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> RunSettings:
        """Read kebab-case keys; unknown keys are ignored, bad values fail loudly."""
        out = cls()
        for f in cls.__dataclass_fields__.values():
            key = f.name.replace("_", "-")
            if key in cfg:
                default = getattr(out, f.name)
                value = cfg[key]
                setattr(
                    out,
                    f.name,
                    type(default)(value) if not isinstance(default, bool) else bool(value),
                )
        if out.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {out.strategy!r}"
            )
        if out.dp not in ("none", "server-fixed", "client-fixed"):
            raise ValueError(f"dp must be none, server-fixed or client-fixed, got {out.dp!r}")
        if out.dp != "none" and out.strategy in ("heterofl", "fedbuff"):
            raise ValueError(
                f"dp applies to fedavg/fedprox (Flower's DP wrappers), not {out.strategy}"
            )
        codec = parse_codec(out.update_codec)  # a CodecError is a ValueError
        if codec.lossy and out.dp == "client-fixed":
            # Flower's fixedclipping_mod clips a model, not an encoded delta
            raise ValueError("dp client-fixed needs update-codec none")
        if out.buffer < 1 or out.max_staleness < 0:
            raise ValueError("buffer must be >= 1 and max-staleness >= 0")
        if out.secure_agg and (
            out.strategy not in ("fedavg", "fedprox") or codec.lossy or out.dp != "none"
        ):
            raise ValueError(
                "secure-agg runs fedavg/fedprox rounds with update-codec none and no dp "
                "(SecAgg+ sums whole models; each device's own is never seen)"
            )
        parse_selection(out.select)  # fail before any round on a bad expression
        return out
