"""The ClientApp's LoRA path: fine-tune adapters on the device's own text, reply with them alone.

The federated family ``byte-lm-lora``: the global model of the run is the *adapters* (rank-r
A/B pairs, :mod:`edgefleet.lora`); the frozen base LM stays on the device and never travels.
A round's message carries the adapters down and back, so its bytes are the adapters' (a few
percent of the model's), and the ServerApp's FedAvg averages adapters like any arrays.

What the round's ``arch-config`` (JSON) holds: ``base`` (the ByteLM config), ``lora`` (rank,
alpha, targets), ``base_sha256`` (the base weights the adapters belong to), ``base_path``
(where a loopback federation keeps them) and ``steps`` / ``eval_bytes``. A device that holds
the base elsewhere names it in its node_config (``lm-base-path``); either way its hash must
equal ``base_sha256``: adapters trained on another base would be noise. A device with a base
cache (``lm-base-dir``, an agent's SuperNode) keeps bases received by message there
(:mod:`.lm_base_cache`); it never reads the run's ``base_path``, a path on another host.

Imported only inside the ClientApp's handlers (it imports torch), like ``torch_train``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from safetensors.torch import load_file

from edgefleet.agent.fl.lm_base_cache import base_digest, base_file
from edgefleet.agent.fl.lora_fit import budget as lora_budget
from edgefleet.agent.fl.lora_fit import lora_step_bytes
from edgefleet.datasets.text_shards import TextShard, load_text_shard
from edgefleet.fl.contract import LM_BASE_NEEDED, LORA_ARCH, Metric, Node, Record, TrainConfig
from edgefleet.lora import LoRAConfig, adapter_arrays, add_lora, heldout_nll, load_adapter_arrays
from edgefleet.zoo import ByteLM, load_state_dict_strict

__all__ = ["LORA_ARCH", "lora_evaluate", "lora_fine_tune", "lora_train_bytes"]

Arrays = dict[str, np.ndarray[Any, Any]]


class LoRARunError(ValueError):
    """The round cannot run on this device (wrong base, bad config): one line for the run."""


def _spec(cfg: Mapping[str, object]) -> dict[str, Any]:
    try:
        spec = json.loads(str(cfg.get(TrainConfig.ARCH_CONFIG, "{}")))
    except ValueError:
        spec = None
    if not isinstance(spec, dict) or not isinstance(spec.get("base"), dict) or "lora" not in spec:
        raise LoRARunError("byte-lm-lora: arch-config needs base and lora")
    return spec


def _base_model(spec: Mapping[str, Any], context: Context) -> ByteLM:
    """The device's frozen base, checked against the hash the adapters belong to.

    Not hashed in full every round: :func:`~.lm_base_cache.base_digest` believes the file's
    stamp (cache files: written when the received bytes were verified; a device's own file:
    hashed once per run, the stamp kept in the run's context state) while its size, mtime and
    inode are unchanged. A full hash here would buy nothing the stamp misses that matters: a
    torn, rewritten or replaced file changes one of the three and is hashed again, and a
    base that passed but loads wrong tensors still fails ``load_state_dict_strict``. The load
    below reads every byte anyway; hashing them too doubled the round's I/O and added seconds
    of CPU on a Pi (and ``read_bytes`` held a second copy of the base in RAM)."""
    path = base_file(spec, context.node_config)
    if not path.is_file():
        raise LoRARunError(
            f"byte-lm-lora: no base LM ({LM_BASE_NEEDED}) at {str(path) or '(unset)'}"
        )
    digest = base_digest(path, context.node_config, context.state)
    want = str(spec.get("base_sha256", ""))
    if want and digest != want:
        raise LoRARunError(
            f"byte-lm-lora: base LM {path.name} is {digest[:12]}, the run's adapters belong "
            f"to {want[:12]}"
        )
    model = ByteLM(**spec["base"])
    load_state_dict_strict(model, load_file(str(path)))
    return model


def lora_train_bytes(model: ByteLM, adapters: int, batch: int, context: int) -> int:
    """:func:`~.lora_fit.lora_step_bytes` of ``model`` (its parameters, adapters included):
    the query's fit check (:func:`~.lora_fit.unfit_reason`) uses the same formula."""
    return lora_step_bytes(
        sum(p.numel() for p in model.parameters()), adapters, dim=model.dim,
        layers=model.n_layers, heads=model.heads, mlp_ratio=model.mlp_ratio, batch=batch,
        context=context,
    )  # fmt: skip


def _prepare(
    params: Arrays, cfg: ConfigRecord, context: Context
) -> tuple[ByteLM, dict[str, Any], TextShard]:
    spec = _spec(cfg)
    shard = load_text_shard(str(context.node_config[Node.DATA_PATH]))
    model = add_lora(_base_model(spec, context), LoRAConfig.from_json(spec["lora"]))
    load_adapter_arrays(model, params)
    return model, spec, shard


def _num(cfg: Mapping[str, object], key: str, default: float) -> float:
    value = cfg.get(key, default)
    return float(value) if isinstance(value, int | float | str) else default


def lora_fine_tune(params: Arrays, cfg: ConfigRecord, context: Context) -> RecordDict:
    """Score the received adapters on the held-out text, train them, score again; reply with
    the trained adapters only."""
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    model, spec, shard = _prepare(params, cfg, context)
    ctx = int(spec["base"].get("context", 128))
    eval_bytes = int(spec.get("eval_bytes", 16384))
    steps = int(spec.get("steps", 20))
    batch = int(_num(cfg, TrainConfig.BATCH_SIZE, 8))
    lr = _num(cfg, TrainConfig.LR, 3e-3)
    n_adapter = sum(int(v.size) for v in params.values())
    budget = lora_budget(context.node_config)
    while budget and batch > 1 and lora_train_bytes(model, n_adapter, batch, ctx) > budget:
        batch //= 2  # memory, not data, is the limit
    need = lora_train_bytes(model, n_adapter, batch, ctx)
    if budget and need > budget:
        raise MemoryError(f"LoRA fine-tuning needs {need} B at batch 1, budget is {budget} B")
    if shard.train.size < ctx + 2:
        raise LoRARunError(f"{shard.name}: {shard.train.size} training bytes for context {ctx}")
    pre_loss, pre_acc, scored = heldout_nll(model, shard.eval, ctx, eval_bytes)
    seed = int(_num(cfg, TrainConfig.SERVER_ROUND, 0)) * 1000 + int(
        _num(context.node_config, Node.PARTITION_ID, 0)
    )
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(steps):
        starts = rng.integers(0, shard.train.size - ctx - 1, size=batch)
        rows = torch.from_numpy(
            np.stack([shard.train[s : s + ctx + 1] for s in starts]).astype(np.int64)
        )
        pk, pv = model.empty_cache(batch)
        logits, _, _ = model(rows[:, :-1], pk, pv)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), rows[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    post_loss, post_acc, _ = heldout_nll(model, shard.eval, ctx, eval_bytes)
    trained = adapter_arrays(model)
    metrics = MetricRecord(
        {
            Metric.NUM_EXAMPLES: int(shard.train.size),
            Metric.TRAIN_LOSS: float(np.mean(losses)) if losses else 0.0,
            Metric.EVAL_LOSS: pre_loss,
            Metric.EVAL_ACC: pre_acc,
            Metric.LOCAL_EVAL_LOSS: post_loss,
            Metric.LOCAL_EVAL_ACC: post_acc,
            Metric.EVAL_EXAMPLES: scored,
            Metric.BATCH_SIZE: batch,
            Metric.CLIENT_SECONDS: time.perf_counter() - t0,
            Metric.CODEC_RESIDUAL: 0.0,
        }
    )
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in trained.items()})
    return RecordDict({Record.ARRAYS: arrays, Record.METRICS: metrics})


def lora_evaluate(params: Arrays, cfg: ConfigRecord, context: Context) -> RecordDict:
    """Held-out NLL (nats per byte) and next-byte accuracy of base + received adapters."""
    torch.set_num_threads(1)
    model, spec, shard = _prepare(params, cfg, context)
    ctx = int(spec["base"].get("context", 128))
    loss, acc, scored = heldout_nll(model, shard.eval, ctx, int(spec.get("eval_bytes", 16384)))
    metrics = MetricRecord(
        {Metric.NUM_EXAMPLES: scored, Metric.EVAL_LOSS: loss, Metric.EVAL_ACC: acc}
    )
    return RecordDict({Record.METRICS: metrics})
