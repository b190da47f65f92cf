"""A LoRA run's base travels to a device that lacks it: once, by message, verified, cached.

Mechanism: the query tells the ServerApp which devices' caches (``lm-base-dir``) lack the run's
base; only their first train message carries it (``lm-base``); the device checks it against the
run's ``base_sha256`` before writing ``<sha256>.safetensors``; a device holding its own copy gets
no base bytes; a second run on the same base sends none; a tampered base fails that device's
round in one line and writes nothing. Real ServerApp loop and ClientApp handlers on the
in-process Grid of tests/test_lm_lora.py (a real SuperLink run of LoRA is its slow test).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Array, ArrayRecord, Error, Message, RecordDict
from safetensors.numpy import save
from safetensors.torch import load_file, save_file

from edgefleet.agent.fl.lm_base_cache import BaseRejected, held, store_base
from edgefleet.agent.fl.supernode import node_config_for
from edgefleet.fl.contract import FAST_POLL_ENV, LM_BASE_NEEDED, Node
from edgefleet.flower.lora_run import BaseSender
from edgefleet.flower.run_settings import RunSettings
from edgefleet.flower.serverapp import run_rounds
from edgefleet.lora import LoRAConfig
from edgefleet.modelops.lm_lora import LoRARun, prepare_lora_run, wire_bytes
from tests.test_lm_lora import _devices, _InProcessGrid, _tiny, task  # noqa: F401 (fixture)


class _FailingGrid(_InProcessGrid):
    """A device's exception becomes an error reply, as Flower's SuperNode sends it."""

    def push_messages(self, messages: Any) -> list[str]:
        ids: list[str] = []
        for msg in messages:
            try:
                ids.extend(super().push_messages([msg]))
            except Exception as exc:
                reply = Message(Error(0, f"{type(exc).__name__}: {exc}"), reply_to=msg)
                reply.metadata.__dict__["_message_id"] = msg.metadata.message_id + "-r"
                self.replies[msg.metadata.message_id] = reply
                ids.append(msg.metadata.message_id)
        return ids


def _settings(run: LoRARun, out: Path) -> RunSettings:
    return RunSettings.from_run_config({
        **run.run_config(), "num-rounds": 1, "min-devices": 1, "lr": 0.01, "batch-size": 2,
        "out-dir": str(out), "poll-interval": 0.0,
    })  # fmt: skip


def _fleet(tmp_path: Path, run: LoRARun) -> dict[int, dict[str, Any]]:
    """sim-000 holds its own copy of the base; sim-001 has only an (empty) base cache."""
    holder, fetcher = _devices(tmp_path, 2, 4000).values()
    own = tmp_path / "own-base.safetensors"
    own.write_bytes(run.base_path.read_bytes())
    return {
        100: {**holder, Node.LM_BASE_PATH: str(own)},
        101: {**fetcher, Node.LM_BASE_DIR: str(tmp_path / "cache-001")},
    }


@pytest.mark.usefixtures("task")
def test_the_base_travels_once_to_the_device_that_lacks_it(tmp_path: Path) -> None:
    base = _tiny()
    run = prepare_lora_run(base, LoRAConfig(rank=2), tmp_path / "srv", steps=2, eval_bytes=512)
    fleet = _fleet(tmp_path, run)
    cached = tmp_path / "cache-001" / f"{run.base_sha256}.safetensors"
    doc = run_rounds(_InProcessGrid(fleet), _settings(run, tmp_path / "out1"))
    assert doc["state"] == "succeeded", doc.get("reason")
    (first,) = doc["rounds"]
    sent = sum(len(Array(v).data) for v in load_file(str(run.base_path)).values())
    assert first["base_bytes"] == {"sim-001": sent}  # the holder got none
    adapters = wire_bytes(run, base)["adapters"]
    assert first["bytes_down"] == 2 * adapters + sent
    assert cached.read_bytes() == run.base_path.read_bytes()  # the run's exact file
    assert sorted(first["device_eval_loss"]) == ["sim-000", "sim-001"]
    assert doc["final"]["base_bytes"] == {}  # delivered: the final evaluation sends none
    assert sorted(doc["final"]["device_eval_loss"]) == ["sim-000", "sim-001"]
    # a second run on the same base: the cache answers the query, nothing extra travels
    doc = run_rounds(_InProcessGrid(fleet), _settings(run, tmp_path / "out2"))
    assert doc["state"] == "succeeded", doc.get("reason")
    assert doc["rounds"][0]["base_bytes"] == {} and doc["final"]["base_bytes"] == {}
    assert doc["rounds"][0]["bytes_down"] == 2 * adapters


@pytest.mark.usefixtures("task")
def test_a_tampered_base_fails_that_device_in_one_line_and_writes_nothing(
    tmp_path: Path,
) -> None:
    run = prepare_lora_run(_tiny(), LoRAConfig(rank=2), tmp_path / "srv", steps=2, eval_bytes=512)
    fleet = _fleet(tmp_path, run)  # sim-000's own copy is the genuine base
    tensors = load_file(str(run.base_path))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3
    save_file(tensors, str(run.base_path))  # what the server sends is not base_sha256
    doc = run_rounds(_FailingGrid(fleet), _settings(run, tmp_path / "out"))
    (first,) = doc["rounds"]
    assert first["participants"] == ["sim-000"] and first["failed"] == 1
    (error,) = first["errors"]
    assert "BaseRejected: byte-lm-lora: the base sent is" in error and "not stored" in error
    assert LM_BASE_NEEDED in error  # so the server sends it again (test_lora_base_cache.py)
    assert "\n" not in error
    cache = tmp_path / "cache-001"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_the_cache_answers_by_content_and_safetensors_bytes_are_canonical(
    tmp_path: Path,
) -> None:
    run = prepare_lora_run(_tiny(), LoRAConfig(rank=2), tmp_path / "srv")
    torch_bytes = run.base_path.read_bytes()
    # what the device writes from the tensors it received (numpy, any order) is the same file
    arrays = {k: v.numpy() for k, v in reversed(list(load_file(str(run.base_path)).items()))}
    assert save(arrays) == torch_bytes
    node = node_config_for("d", "rpi4", 1 << 30, "x", lm_base_dir=str(tmp_path / "c"))
    assert node[Node.LM_BASE_DIR] == str(tmp_path / "c")
    assert held(run.base_sha256, node) == "missing"
    assert held(run.base_sha256, {}) is None  # no cache: the device takes no base by message
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    path = store_base(record, {"base_sha256": run.base_sha256}, node)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == run.base_sha256
    assert held(run.base_sha256, node) == "held"
    path.write_bytes(torch_bytes[:-4])  # a torn cache file is missing, and is sent again
    assert held(run.base_sha256, node) == "missing"
    with pytest.raises(BaseRejected, match="has no base cache"):
        store_base(record, {"base_sha256": run.base_sha256}, {})


@pytest.mark.usefixtures("task")
def test_a_base_the_server_cannot_read_is_one_line(tmp_path: Path) -> None:
    run = prepare_lora_run(_tiny(), LoRAConfig(rank=2), tmp_path / "srv")
    run.base_path.write_bytes(b"not a safetensors file")
    sender = BaseSender(RunSettings.from_run_config(run.run_config()), [7])
    msg = Message(RecordDict(), dst_node_id=7, message_type="train")
    with pytest.raises(ValueError, match="cannot read the run's base at") as info:
        sender.attach([msg])
    assert "\n" not in str(info.value)
    assert sender.attach([Message(RecordDict(), dst_node_id=8, message_type="train")]) == {}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_base_travels_by_message_on_a_real_superlink_and_supernodes(tmp_path: Path) -> None:
    """Flower's Deployment Engine: sim-001 has a base cache only and gets the base in round 1;
    sim-000 reads the run's file (a loopback node); a second run sends no base at all.

    A base of any size travels in pieces without our help: Flower 1.42 moves a message as
    content-addressed objects, each Array split into ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``
    chunks (5 MB) pushed and pulled one gRPC call each (its gRPC limit, 2 GB, bounds one
    chunk, not the message). Here every Flower process chunks at 8 KB, so the base's tensors
    cross SuperLink and SuperNode in several chunks each and the device reassembles and
    verifies them as the run's file."""
    from edgefleet.devtools.fl_local import LocalFederation, wait_progress

    chunk = 8192
    run = prepare_lora_run(_tiny(), LoRAConfig(rank=2), tmp_path / "srv", steps=2, eval_bytes=512)
    assert max(v.numel() * 4 for v in load_file(str(run.base_path)).values()) > 3 * chunk
    paths = [Path(str(c[Node.DATA_PATH])) for c in _devices(tmp_path, 2, 4000).values()]
    cache = tmp_path / "cache-001"
    config = {**run.run_config(), "num-rounds": 2, "min-devices": 2, "batch-size": 2}
    with LocalFederation(
        tmp_path / "fed", num_nodes=2, data_paths=paths, train_workers=False,
        node_facts={1: {Node.LM_BASE_DIR: str(cache)}},
        env={**FAST_POLL_ENV, "FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE": str(chunk)},
    ) as fed:  # fmt: skip
        first = wait_progress(fed.run(config), timeout=500)
        second = wait_progress(fed.run(config, name="run2"), timeout=500)
    assert first["state"] == second["state"] == "succeeded", (first.get("reason"), second)
    sent = sum(len(Array(v).data) for v in load_file(str(run.base_path)).values())
    assert [r["base_bytes"] for r in first["rounds"]] == [{"sim-001": sent}, {}]
    assert sorted(first["rounds"][0]["device_eval_loss"]) == ["sim-000", "sim-001"]
    assert (cache / f"{run.base_sha256}.safetensors").read_bytes() == run.base_path.read_bytes()
    assert all(r["base_bytes"] == {} for r in second["rounds"])
    assert second["final"]["base_bytes"] == {}
