"""A LoRA run's base on the device: a held base answers from its stamp, a device that cannot
train is left out before any base travels, a base is sent once per device and run.

Mechanisms: ``held()`` reads no byte of a base its stamp (size, mtime_ns, inode) vouches for,
and hashes again when the file changed behind the stamp's back; a device's own base file is
hashed once per run (the stamp in the run's context state), never stamped beside; the query's
memory verdict is the train handler's own formula at batch 1; an unfit device gets no base and
no round and the run record says why; a device whose round failed after receiving the base is
not sent it again, one whose error says it still lacks it is. Real ServerApp loop and ClientApp
handlers on the in-process Grid of tests/test_lm_lora.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Error, Message, MessageType, RecordDict
from safetensors.torch import load_file

from edgefleet.agent.fl import clientapp, lm_base_cache
from edgefleet.agent.fl.lm_base_cache import STAMP_STATE, base_digest, held, store_base
from edgefleet.agent.fl.lora_client import lora_fine_tune, lora_train_bytes
from edgefleet.fl.contract import LM_BASE_NEEDED, Node, Record
from edgefleet.flower.lora_run import query_content
from edgefleet.flower.run_settings import RunSettings
from edgefleet.flower.serverapp import run_rounds
from edgefleet.lora import LoRAConfig, add_lora
from edgefleet.modelops.lm_lora import LoRARun, prepare_lora_run
from tests.test_lm_lora import TINY, _devices, _InProcessGrid, _one_round_message, _tiny, task  # noqa: F401
from tests.test_lora_base_by_message import _FailingGrid, _fleet, _settings


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every full hash of a file the cache holds, in order (not the store's check of the
    temporary file it is writing)."""
    seen: list[Path] = []
    real = lm_base_cache._sha256

    def counting(path: Path) -> str:
        if not path.name.endswith(".tmp"):
            seen.append(path)
        return real(path)

    monkeypatch.setattr(lm_base_cache, "_sha256", counting)
    return seen


def _record(run: LoRARun) -> ArrayRecord:
    return ArrayRecord({k: Array(v.numpy()) for k, v in load_file(str(run.base_path)).items()})


def test_a_held_base_is_answered_from_its_stamp_until_the_file_changes(
    tmp_path: Path, hashes: list[Path]
) -> None:
    run = prepare_lora_run(_tiny(), LoRAConfig(rank=2), tmp_path / "srv")
    node = {Node.LM_BASE_DIR: str(tmp_path / "cache")}
    path = store_base(_record(run), {"base_sha256": run.base_sha256}, node)
    stamp = path.with_name(path.name + ".stamp")
    assert json.loads(stamp.read_text())["sha256"] == run.base_sha256
    for _ in range(3):
        assert held(run.base_sha256, node) == "held"
    assert hashes == []  # the stamp answered: not a byte of the base was read
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched, same bytes
    assert held(run.base_sha256, node) == "held" and hashes == [path]  # hashed, re-stamped
    assert held(run.base_sha256, node) == "held" and len(hashes) == 1
    stamp.write_text("{torn")  # a torn stamp vouches for nothing
    assert held(run.base_sha256, node) == "held" and len(hashes) == 2
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, new bytes, written behind the stamp's back (mtime moves)
    with path.open("r+b") as f:
        f.write(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000))
    assert held(run.base_sha256, node) == "missing"
    path.write_bytes(bytes(data[:-4]))  # a different size is never believed either
    assert held(run.base_sha256, node) == "missing" and len(hashes) == 4


def test_a_devices_own_base_is_hashed_once_per_run_and_never_stamped_beside(
    tmp_path: Path, hashes: list[Path]
) -> None:
    run = prepare_lora_run(_tiny(), LoRAConfig(rank=2), tmp_path / "srv")
    own = run.base_path  # the device's own file: not ours to write beside
    node = {Node.LM_BASE_PATH: str(own)}
    state = RecordDict()
    assert base_digest(own, node, state) == base_digest(own, node, state) == run.base_sha256
    assert hashes == [own] and STAMP_STATE in state.config_records
    assert sorted(p.name for p in own.parent.iterdir()) == ["adapters-init.npz", own.name]
    assert base_digest(own, node, None) == run.base_sha256 and len(hashes) == 2  # no state
    own.write_bytes(own.read_bytes() + b"x")  # changed during the run: hashed again
    assert base_digest(own, node, state) != run.base_sha256 and len(hashes) == 3


def test_training_trusts_the_cache_stamp(tmp_path: Path, hashes: list[Path]) -> None:
    (node,) = _devices(tmp_path, 1, 4000).values()
    params, cfg = _one_round_message(tmp_path / "run", _tiny())
    spec = json.loads(str(cfg["arch-config"]))
    cached = {**node, Node.LM_BASE_DIR: str(tmp_path / "cache")}
    run_base = Path(spec["base_path"])
    records = ArrayRecord({k: Array(v.numpy()) for k, v in load_file(str(run_base)).items()})
    store_base(records, spec, cached)
    ctx = Context(1, 1, cached, RecordDict(), {})
    for _ in range(2):
        out = lora_fine_tune(params, cfg, ctx)
        assert set(out.array_records[Record.ARRAYS]) == set(params)
    assert hashes == []


def _query(node: dict[str, Any], settings: RunSettings) -> dict[str, Any]:
    msg = Message(query_content(settings), dst_node_id=1, message_type=MessageType.QUERY)
    msg.metadata.__dict__["_message_id"] = "q"
    reply = clientapp.app(msg, Context(1, 1, node, RecordDict(), {}))
    return dict(reply.content.config_records[Record.FACTS])


@pytest.mark.usefixtures("task")
def test_the_query_says_a_device_cannot_train_with_the_train_handlers_own_formula(
    tmp_path: Path,
) -> None:
    base = _tiny()
    run = prepare_lora_run(base, LoRAConfig(rank=2), tmp_path / "srv", steps=1)
    settings = _settings(run, tmp_path / "out")
    asked = query_content(settings).config_records[Record.LM_BASE]
    assert asked["weights"] == run.model_params + run.adapter_params
    assert asked["adapters"] == run.adapter_params
    adapted = add_lora(_tiny(), LoRAConfig(rank=2))
    need = lora_train_bytes(adapted, run.adapter_params, 1, TINY["context"])
    (node,) = _devices(tmp_path, 1, 4000).values()
    cache = {**node, Node.LM_BASE_DIR: str(tmp_path / "c"), Node.BUDGET_FRACTION: 1.0}
    fits = _query({**cache, Node.RAM_BYTES: need}, settings)
    assert Record.LM_LORA_UNFIT not in fits and fits[Record.LM_BASE_STATE] == "missing"
    short = _query({**cache, Node.RAM_BYTES: need - 1}, settings)
    assert short[Record.LM_LORA_UNFIT] == (
        f"LoRA fine-tuning needs {need} B at batch 1, budget is {need - 1} B"
    )
    assert Record.LM_BASE_STATE not in short  # left out: it is sent no base
    with pytest.raises(MemoryError, match=f"needs {need} B at batch 1"):  # the round agrees
        params, cfg = _one_round_message(tmp_path / "r", _tiny())
        lora_fine_tune(params, cfg, Context(1, 1, {**node, Node.RAM_BYTES: need - 1,
                                                   Node.BUDGET_FRACTION: 1.0}, RecordDict(), {}))  # fmt: skip


@pytest.mark.usefixtures("task")
def test_a_device_that_cannot_train_gets_no_base_and_no_round(tmp_path: Path) -> None:
    run = prepare_lora_run(_tiny(), LoRAConfig(rank=2), tmp_path / "srv", steps=1, eval_bytes=256)
    fleet = _fleet(tmp_path, run)
    fleet[101] = {**fleet[101], Node.RAM_BYTES: 4096, Node.BUDGET_FRACTION: 1.0}
    settings = _two_rounds(run, tmp_path / "out")
    doc = run_rounds(_InProcessGrid(fleet), settings)
    assert doc["state"] == "succeeded", doc.get("reason")
    assert list(doc["left_out"]) == ["sim-001"]
    assert "at batch 1, budget is 4096 B" in doc["left_out"]["sim-001"]
    assert doc["devices"]["101"]["selected"] is False
    for r in doc["rounds"]:
        assert r["participants"] == ["sim-000"] and r["failed"] == 0 and r["base_bytes"] == {}
    assert sorted(doc["final"]["device_eval_loss"]) == ["sim-000"]
    assert not (tmp_path / "cache-001").exists()


class _LosingGrid(_FailingGrid):
    """The first train message to node 101 is lost: Flower answers it with an error reply, as
    it does for a node that went offline, and the device never sees the base."""

    lost = False

    def push_messages(self, messages: Any) -> list[str]:
        ids: list[str] = []
        for msg in messages:
            if (
                msg.metadata.dst_node_id == 101
                and not self.lost
                and msg.metadata.message_type == "train"
            ):
                self.lost = True
                msg.metadata.__dict__["_message_id"] = "lost"
                reply = Message(Error(0, "node went offline"), reply_to=msg)
                self.replies["lost"] = reply
                ids.append("lost")
            else:
                ids.extend(super().push_messages([msg]))
        return ids


def _two_rounds(run: LoRARun, out: Path, rounds: int = 2) -> RunSettings:
    return RunSettings.from_run_config({
        **run.run_config(), "num-rounds": rounds, "min-devices": 1, "lr": 0.01,
        "batch-size": 2, "out-dir": str(out), "poll-interval": 0.0,
    })  # fmt: skip


@pytest.mark.usefixtures("task")
def test_the_base_is_sent_once_per_run_unless_the_device_says_it_still_lacks_it(
    tmp_path: Path,
) -> None:
    run = prepare_lora_run(_tiny(), LoRAConfig(rank=2), tmp_path / "srv", steps=1, eval_bytes=256)
    sent = sum(len(Array(v).data) for v in load_file(str(run.base_path)).values())
    fleet = _fleet(tmp_path, run)
    # its round fails after the base arrived (no shard): it keeps the base, is not sent it again
    broken = {**fleet, 101: {**fleet[101], Node.DATA_PATH: str(tmp_path / "no-shard.npz")}}
    doc = run_rounds(_FailingGrid(broken), _two_rounds(run, tmp_path / "o1"))
    assert [r["failed"] for r in doc["rounds"]] == [1, 1]
    assert [r["base_bytes"] for r in doc["rounds"]] == [{"sim-001": sent}, {}]
    assert doc["final"]["base_bytes"] == {}
    assert (tmp_path / "cache-001" / f"{run.base_sha256}.safetensors").is_file()
    # the base never arrived: the next round's error says so, and the round after gets it
    fleet[101] = {**fleet[101], Node.LM_BASE_DIR: str(tmp_path / "cache-b")}
    doc = run_rounds(_LosingGrid(fleet), _two_rounds(run, tmp_path / "o2", rounds=3))
    assert [r["failed"] for r in doc["rounds"]] == [1, 1, 0]
    assert LM_BASE_NEEDED in doc["rounds"][1]["errors"][0]
    assert [r["base_bytes"] for r in doc["rounds"]] == [{"sim-001": sent}, {}, {"sim-001": sent}]
    assert sorted(doc["rounds"][2]["participants"]) == ["sim-000", "sim-001"]


def test_the_query_handlers_lora_modules_import_no_torch() -> None:
    """Every message is a fresh ClientApp process: the query's LoRA checks must stay light."""
    import subprocess
    import sys

    code = (
        "import sys, edgefleet.agent.fl.lora_fit, edgefleet.agent.fl.lm_base_cache; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_run_the_server_cannot_size_leaves_the_verdict_to_the_round(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgefleet.agent.fl.lora_fit import unfit_reason

    run = prepare_lora_run(_tiny(), LoRAConfig(rank=2), tmp_path / "srv")
    run.base_path.write_bytes(b"\xff" * 4)  # no safetensors header to count the base from
    asked = query_content(_settings(run, tmp_path / "out")).config_records[Record.LM_BASE]
    assert dict(asked) == {"sha256": run.base_sha256}
    assert "cannot size the run" in caplog.text
    tight = {Node.RAM_BYTES: 1, Node.BUDGET_FRACTION: 1.0}
    assert unfit_reason(asked, tight) is None  # unsized: the round's own check decides
    assert unfit_reason({"weights": "x", "adapters": 1, "base": "{}"}, tight) is None
    sized = {"weights": 10, "adapters": 1, "base": json.dumps(TINY)}
    assert unfit_reason(sized, {}) is None  # no budget known: no verdict either
    assert unfit_reason(sized, tight) is not None


def test_a_received_base_is_written_from_the_messages_own_bytes() -> None:
    """The store reads each tensor as a read-only view into the Array's bytes (no copy of a
    base that can be hundreds of MB); other layouts are decoded as Flower does."""
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    array = Array(values)
    view = lm_base_cache._view(array)
    np.testing.assert_array_equal(view, values)
    assert view.dtype == values.dtype and not view.flags.writeable
    base: Any = view
    while isinstance(base, np.ndarray):
        base = base.base
    assert base is array.data  # the message's bytes themselves
    for other in (np.asfortranarray(values), np.asarray(7, np.int64), np.zeros((0, 3), np.float16)):
        got = lm_base_cache._view(Array(other))
        np.testing.assert_array_equal(got, other)
        assert got.dtype == other.dtype and got.flags.c_contiguous
