"""LoRA adapters for the byte-level LM, and federated LoRA rounds through our ServerApp/ClientApp.

Mechanism: the base is frozen and only adapters train; the adapted model starts equal to the
base (B = 0); merging folds the adapters into plain weights that compute what the adapters do;
only adapter tensors travel. Federation: 2 devices with their own stdlib packages, 2 rounds of
our real ServerApp loop (Flower's FedAvg over the adapters) and our real ClientApp handlers, on an
in-process Grid (the test budget is seconds; the same run on a real SuperLink and SuperNodes is
the slow test at the end and ``benchmarks/lm_lora.py``).
"""

from __future__ import annotations

import copy
import json
import math
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import save_file

from edgefleet.agent.fl import clientapp
from edgefleet.agent.fl.lora_client import LoRARunError, lora_fine_tune, lora_train_bytes
from edgefleet.agent.fl.supernode import node_config_for
from edgefleet.datasets.core import DatasetError
from edgefleet.datasets.text_shards import (
    load_text_shard,
    save_text_shard,
    stdlib_package_shards,
    text_dir_shards,
)
from edgefleet.fl.contract import LORA_ARCH, Metric, Node, Record, TrainConfig
from edgefleet.flower import model as fl_model
from edgefleet.flower.run_settings import RunSettings
from edgefleet.flower.serverapp import run_rounds
from edgefleet.lora import (
    LoRAConfig,
    LoRAError,
    adapter_arrays,
    add_lora,
    heldout_nll,
    load_adapter_arrays,
    merge_lora,
)
from edgefleet.modelops.lm_lora import merge_adapters, prepare_lora_run, wire_bytes
from edgefleet.zoo import ByteLM

TINY = {"vocab": 256, "dim": 32, "layers": 1, "heads": 2, "mlp_ratio": 2, "context": 32}


def _tiny(seed: int = 0) -> ByteLM:
    torch.manual_seed(seed)
    return ByteLM(**TINY).eval()


def _tokens(n: int = 2, t: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (n, t), generator=torch.Generator().manual_seed(1))


def _logits(model: ByteLM, x: torch.Tensor) -> torch.Tensor:
    pk, pv = model.empty_cache(x.shape[0])
    with torch.no_grad():
        out: torch.Tensor = model(x, pk, pv)[0]
    return out


def test_adapters_start_at_the_base_and_only_they_train() -> None:
    base = _tiny()
    adapted = add_lora(copy.deepcopy(base), LoRAConfig(rank=4, targets=("q", "v", "up")))
    x = _tokens()
    assert torch.allclose(_logits(adapted, x), _logits(base, x))  # B = 0: the base exactly
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_arrays(adapted))
    assert trainable == {
        "blocks.0.qkv.lora_a.q", "blocks.0.qkv.lora_b.q", "blocks.0.qkv.lora_a.v",
        "blocks.0.qkv.lora_b.v", "blocks.0.up.lora_a.up", "blocks.0.up.lora_b.up",
    }  # fmt: skip
    frozen = {n: p.detach().clone() for n, p in adapted.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in adapted.parameters() if p.requires_grad], lr=0.1)
    adapted.train()
    for _ in range(3):
        pk, pv = adapted.empty_cache(2)
        logits = adapted(x[:, :-1], pk, pv)[0]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    for n, p in adapted.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), n
    moved = adapter_arrays(adapted)["blocks.0.qkv.lora_b.q"]
    assert float(np.abs(moved).sum()) > 0  # the adapters moved
    assert not torch.allclose(_logits(adapted.eval(), x), _logits(base, x))


def test_merged_weights_compute_what_the_adapters_do() -> None:
    adapted = add_lora(_tiny(), LoRAConfig(rank=4, targets=("q", "k", "v", "proj", "up", "down")))
    rng = np.random.default_rng(0)
    random = {k: rng.normal(0, 0.05, v.shape).astype(np.float32)
              for k, v in adapter_arrays(adapted).items()}  # fmt: skip
    load_adapter_arrays(adapted, random)
    merged = merge_lora(adapted)
    assert set(merged.state_dict()) == set(_tiny().state_dict())  # a plain ByteLM
    x = _tokens()
    assert torch.allclose(_logits(merged, x), _logits(adapted, x), atol=1e-5)
    assert not torch.allclose(_logits(merged, x), _logits(_tiny(), x), atol=1e-3)
    # the coordinator's merge of the same adapters into the untouched base: the same model
    again = merge_adapters(_tiny(), LoRAConfig(rank=4, targets=("q", "k", "v", "proj", "up", "down")),
                           random)  # fmt: skip
    assert torch.allclose(_logits(again, x), _logits(merged, x), atol=1e-6)


def test_wrong_adapters_and_configs_fail_with_one_clear_error() -> None:
    adapted = add_lora(_tiny(), LoRAConfig(rank=2))
    arrays = adapter_arrays(adapted)
    with pytest.raises(LoRAError, match="do not match"):
        load_adapter_arrays(adapted, {**arrays, "extra": np.zeros(1, np.float32)})
    key = next(iter(arrays))
    with pytest.raises(LoRAError, match="shape"):
        load_adapter_arrays(adapted, {**arrays, key: np.zeros((3, 3), np.float32)})
    with pytest.raises(LoRAError, match="targets"):
        LoRAConfig(targets=("qkv",))
    with pytest.raises(LoRAError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(LoRAError, match="already"):
        add_lora(adapted, LoRAConfig(rank=2))


def test_device_text_is_split_by_source_with_its_own_held_out_modules(tmp_path: Path) -> None:
    shards = stdlib_package_shards(2, max_bytes=40_000)
    assert [s.sources for s in shards] == [("asyncio", "concurrent"), ("email", "http", "urllib")]
    for s in shards:
        assert 0 < s.eval.size < s.train.size and s.train.size + s.eval.size <= 40_000 + 64
        assert bytes(s.eval[:2000]) not in bytes(s.train)  # held out whole documents
    assert bytes(shards[0].train[:4000]) not in bytes(shards[1].train)  # non-IID by source
    back = load_text_shard(save_text_shard(shards[0], tmp_path / "s.npz"))
    assert back.sources == shards[0].sources and np.array_equal(back.train, shards[0].train)
    (tmp_path / "a.txt").write_text("alpha " * 500)
    (tmp_path / "b.txt").write_text("beta " * 500)
    (user,) = text_dir_shards({"me": [tmp_path / "a.txt", tmp_path / "b.txt"]})
    assert user.train.size > 0 and user.eval.size > 0
    with pytest.raises(DatasetError, match="no such text file"):
        text_dir_shards({"me": [tmp_path / "missing.txt"]})
    with pytest.raises(DatasetError, match="at least 2"):
        text_dir_shards({"me": [tmp_path / "a.txt"]})
    with pytest.raises(DatasetError, match="not a text shard"):
        load_text_shard(fl_model.save_params({"w": np.zeros(2, np.float32)}, tmp_path / "x.npz"))
    with pytest.raises(DatasetError, match="built-in text devices"):
        stdlib_package_shards(99)


# -- federated rounds ------------------------------------------------------------------------


class _InProcessGrid(Grid):
    """Flower's Grid contract, delivering each pushed message to our ClientApp in-process.

    What a SuperLink adds (transport, node liveness) is exercised by the slow test below and by
    tests/fl/; here the rounds, FedAvg and the handlers are the real ones.
    """

    def __init__(self, node_configs: dict[int, dict[str, Any]]) -> None:
        self.node_configs = node_configs
        self.replies: dict[str, Message] = {}
        self.states = {n: RecordDict() for n in node_configs}

    def set_run(self, run: Any) -> None:
        pass

    @property
    def run(self) -> Any:
        return None

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:  # fmt: skip
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_configs)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            node = msg.metadata.dst_node_id
            ctx = Context(1, node, self.node_configs[node], self.states[node], {})
            self.replies[msg.metadata.message_id] = clientapp.app(msg, ctx)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages need a task identity (Flower sets it in its app processes)."""
    for attr in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _devices(tmp_path: Path, n: int = 2, max_bytes: int = 12_000) -> dict[int, dict[str, Any]]:
    out = {}
    for i, shard in enumerate(stdlib_package_shards(n, max_bytes=max_bytes)):
        path = save_text_shard(shard, tmp_path / f"text-{i}.npz")
        cfg = node_config_for(f"sim-{i:03d}", "rpi4", 4 << 30, str(path), partition_id=i)
        out[100 + i] = cfg
    return out


@pytest.mark.usefixtures("task")
def test_federated_lora_rounds_lower_each_devices_perplexity_sending_adapters_only(
    tmp_path: Path,
) -> None:
    base = _tiny()
    run = prepare_lora_run(base, LoRAConfig(rank=4), tmp_path / "run", steps=8, eval_bytes=2048)
    settings = RunSettings.from_run_config({
        **run.run_config(), "num-rounds": 2, "min-devices": 2, "lr": 0.01, "batch-size": 4,
        "out-dir": str(tmp_path / "out"), "poll-interval": 0.0,
    })  # fmt: skip
    doc = run_rounds(_InProcessGrid(_devices(tmp_path)), settings)
    assert doc["state"] == "succeeded", doc.get("reason")
    rounds = doc["rounds"]
    before = rounds[0]["device_eval_loss"]  # the base model on each device's held-out text
    after = doc["final"]["device_eval_loss"]  # base + the federated adapters
    assert sorted(before) == sorted(after) == ["sim-000", "sim-001"]
    for device in before:
        assert math.exp(after[device]) < math.exp(before[device]) - 1.0, (device, before, after)
    # only adapters travel: each round moves 2 devices x the adapters, down and up
    sizes = wire_bytes(run, base)
    adapters, full = sizes["adapters"], sizes["full_model"]
    assert 4 * run.adapter_params < adapters < full / 5
    for r in rounds:
        assert r["bytes_down"] == r["bytes_up"] == 2 * adapters
    final = fl_model.load_params(tmp_path / "out" / "final.npz")
    assert set(final) == set(fl_model.load_params(run.init_path))  # adapter names only
    assert not np.allclose(final["blocks.0.qkv.lora_b.q"], 0.0)  # FedAvg moved them
    # the merged model scores what the adapters scored, on a device's own held-out text
    merged = merge_adapters(base, LoRAConfig(rank=4), final)
    shard = load_text_shard(_devices(tmp_path)[100][Node.DATA_PATH])
    nll, _, _ = heldout_nll(merged, shard.eval, 32, 2048)
    assert nll == pytest.approx(after["sim-000"], rel=1e-4)


def _one_round_message(run_dir: Path, base: ByteLM, **spec_update: Any) -> tuple[Any, ConfigRecord]:
    run = prepare_lora_run(base, LoRAConfig(rank=2), run_dir, steps=1, eval_bytes=512)
    spec = {**run.arch_config, **spec_update}
    cfg = ConfigRecord({TrainConfig.ARCH: LORA_ARCH, TrainConfig.ARCH_CONFIG: json.dumps(spec),
                        TrainConfig.BATCH_SIZE: 4})  # fmt: skip
    return fl_model.load_params(run.init_path), cfg


def test_a_device_refuses_adapters_of_another_base_and_what_does_not_fit(tmp_path: Path) -> None:
    (node,) = _devices(tmp_path, 1, 4000).values()
    params, cfg = _one_round_message(tmp_path / "run", _tiny())
    ctx = Context(1, 1, node, RecordDict(), {})
    out = lora_fine_tune(params, cfg, ctx)  # the run's own base: fine
    assert set(out.array_records[Record.ARRAYS]) == set(params)
    scored = out.metric_records[Record.METRICS][Metric.EVAL_EXAMPLES]
    assert isinstance(scored, int) and scored > 0
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny(seed=5).state_dict().items()}, str(other))
    ctx = Context(1, 1, {**node, Node.LM_BASE_PATH: str(other)}, RecordDict(), {})
    with pytest.raises(LoRARunError, match="belong to"):
        lora_fine_tune(params, cfg, ctx)
    ctx = Context(1, 1, {**node, Node.LM_BASE_PATH: str(tmp_path / "nope")}, RecordDict(), {})
    with pytest.raises(LoRARunError, match="no base LM"):
        lora_fine_tune(params, cfg, ctx)
    bad = ConfigRecord({TrainConfig.ARCH: LORA_ARCH, TrainConfig.ARCH_CONFIG: "{}"})
    with pytest.raises(LoRARunError, match="needs base and lora"):
        lora_fine_tune(params, bad, Context(1, 1, node, RecordDict(), {}))
    model = _tiny()
    need = lora_train_bytes(model, 100, 1, 32)
    assert need > 4 * sum(p.numel() for p in model.parameters())
    tiny_ram = {**node, Node.RAM_BYTES: need // 2, Node.BUDGET_FRACTION: 1.0}
    with pytest.raises(MemoryError, match="budget"):
        lora_fine_tune(params, cfg, Context(1, 1, tiny_ram, RecordDict(), {}))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_federated_lora_on_a_real_superlink_and_supernodes(tmp_path: Path) -> None:
    """The same run through Flower's Deployment Engine: SuperLink, 2 SuperNodes, `flwr run`."""
    from edgefleet.devtools.fl_local import LocalFederation, wait_progress

    devices = _devices(tmp_path, 2, 12_000)
    run = prepare_lora_run(_tiny(), LoRAConfig(rank=4), tmp_path / "run", steps=8, eval_bytes=2048)
    paths = [Path(str(cfg[Node.DATA_PATH])) for cfg in devices.values()]
    with LocalFederation(tmp_path / "fed", num_nodes=2, data_paths=paths) as fed:
        out = fed.run({**run.run_config(), "num-rounds": 2, "min-devices": 2, "lr": 0.01,
                       "batch-size": 4})  # fmt: skip
        doc = wait_progress(out, timeout=500)
    assert doc["state"] == "succeeded", doc.get("reason")
    before, after = doc["rounds"][0]["device_eval_loss"], doc["final"]["device_eval_loss"]
    assert all(after[d] < before[d] for d in before)
    assert all(r["bytes_up"] == 2 * wire_bytes(run, _tiny())["adapters"] for r in doc["rounds"])
    # merged and exported like any byte-lm: onnxruntime scores what the devices scored
    from edgefleet.modelops.lm_lora import export_merged
    from edgefleet.modelops.lm_measure import ort_perplexity, session

    merged = merge_adapters(_tiny(), LoRAConfig(rank=4), fl_model.load_params(out / "final.npz"))
    (graph,) = export_merged(merged, tmp_path / "merged", ("fp32",))
    shard = load_text_shard(paths[0])
    ppl = ort_perplexity(session(graph.path), shard.eval, 32, 2048)
    assert ppl == pytest.approx(math.exp(after["sim-000"]), rel=1e-3)
