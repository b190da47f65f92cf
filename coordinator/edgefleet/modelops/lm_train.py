"""Train the zoo's byte-level LM on a text corpus: seeded, quick, cached per data dir.

Why a fixed step budget instead of epochs: the corpus (a few MB) is larger than what 2 CPU cores
see in minutes, so training samples random windows (seeded) for ``steps`` steps; the result is a
function of (corpus hash, config, steps, batch, seed) only, and that tuple names the cache entry.
A second run with the same tuple loads the weights instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from edgefleet.datasets.text import TextCorpus
from edgefleet.zoo import ArchitectureSpec, ByteLM, build_model, load_state_dict_strict

__all__ = ["LMTrainConfig", "TrainedLM", "perplexity", "train_lm"]


@dataclass(frozen=True)
class LMTrainConfig:
    """Model shape and the training budget (everything the result depends on)."""

    dim: int = 256
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    context: int = 128
    steps: int = 300
    batch: int = 16
    lr: float = 3e-3
    seed: int = 0

    def arch(self) -> dict[str, int]:
        return {
            "vocab": 256,
            "dim": self.dim,
            "layers": self.layers,
            "heads": self.heads,
            "mlp_ratio": self.mlp_ratio,
            "context": self.context,
        }


@dataclass
class TrainedLM:
    """A trained model, its spec and what training measured."""

    model: ByteLM
    spec: ArchitectureSpec
    config: LMTrainConfig
    corpus: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    cached: bool = False


def _key(corpus: TextCorpus, config: LMTrainConfig) -> str:
    blob = json.dumps({"corpus": corpus.sha256, **asdict(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _batch(
    data: np.ndarray[Any, Any], rng: np.random.Generator, batch: int, ctx: int
) -> torch.Tensor:
    starts = rng.integers(0, data.size - ctx - 1, size=batch)
    rows = np.stack([data[s : s + ctx + 1] for s in starts]).astype(np.int64)
    return torch.from_numpy(rows)


def perplexity(model: ByteLM, data: np.ndarray[Any, Any], context: int, max_bytes: int) -> float:
    """exp(mean next-byte NLL) over consecutive ``context`` windows of the first ``max_bytes``."""
    n = min(data.size, max_bytes)
    windows = (n - 1) // context
    if windows < 1:
        raise ValueError(f"held-out text too short: {n} bytes for context {context}")
    rows = torch.from_numpy(data[: windows * context + 1].astype(np.int64))
    x = rows[:-1].view(windows, context)
    y = rows[1:].view(windows, context)
    total = 0.0
    with torch.no_grad():
        for i in range(0, windows, 16):
            pk, pv = model.empty_cache(x[i : i + 16].shape[0])
            logits, _, _ = model(x[i : i + 16], pk, pv)
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), y[i : i + 16].reshape(-1), reduction="sum"
                )
            )
    return math.exp(total / (windows * context))


def train_lm(
    corpus: TextCorpus,
    config: LMTrainConfig,
    data_dir: Path | None = None,
    *,
    eval_bytes: int = 65536,
    quiet: bool = False,
) -> TrainedLM:
    """Train (or load from ``data_dir/lm/<key>``) and measure held-out perplexity."""
    spec = ArchitectureSpec("byte-lm", config.arch(), (config.context,))
    cache = data_dir / "lm" / f"{corpus.name}-{_key(corpus, config)}" if data_dir else None
    if cache is not None and (cache / "model.safetensors").exists():
        model = build_model(spec)
        assert isinstance(model, ByteLM)
        load_state_dict_strict(model, load_file(str(cache / "model.safetensors")))
        meta = json.loads((cache / "train.json").read_text())
        return TrainedLM(model, spec, config, corpus.describe(), meta["metrics"], cached=True)
    if corpus.train.size < config.context + 2:
        raise ValueError(f"training text too short for context {config.context}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = build_model(spec)
    assert isinstance(model, ByteLM)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    warm = max(1, config.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / config.steps)))
        ),
    )
    started = time.perf_counter()
    loss_value = float("nan")
    for step in range(config.steps):
        rows = _batch(corpus.train, rng, config.batch, config.context)
        pk, pv = model.empty_cache(config.batch)
        logits, _, _ = model(rows[:, :-1], pk, pv)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), rows[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        _progress(step + 1, config.steps, loss_value, quiet)
    model.eval()
    metrics = {
        "train_loss": loss_value,
        "train_seconds": time.perf_counter() - started,
        "perplexity": perplexity(model, corpus.test, config.context, eval_bytes),
    }
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(cache / "model.safetensors"),
        )
        meta = {"spec": spec.to_json(), "config": asdict(config), "corpus": corpus.describe()}
        (cache / "train.json").write_text(json.dumps({**meta, "metrics": metrics}, indent=1))
    return TrainedLM(model, spec, config, corpus.describe(), metrics)


def _progress(step: int, total: int, loss: float, quiet: bool) -> None:
    """A one-line bar on stderr: redrawn on a terminal, one line per quarter in a log."""
    every = 1 if sys.stderr.isatty() else 25
    if quiet or 100 * step // total // every == 100 * (step - 1) // total // every:
        return
    filled = 30 * step // total
    end = "\r" if sys.stderr.isatty() else "\n"
    sys.stderr.write(
        f"{end}byte-lm: training [{'#' * filled}{'.' * (30 - filled)}] "
        f"{step}/{total} steps, loss {loss:.3f}"
    )
    if step == total:
        sys.stderr.write("\n")
    sys.stderr.flush()
