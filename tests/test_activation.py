"""Activation as persisted stages (``edgefleet.agent.update``): fetch -> verify -> stage ->
commit | rollback, with the activation record the single source of truth for what is served.

A crash is simulated two ways: a forked child that runs an activation and dies (``os._exit``)
right after each step that touches the disk, then a fresh cache and reconciler in the parent
(what an agent restart builds); and a record written as a crash at each stage would leave it.
Either way the device must come back serving the old variant or the new one - never half
of an update - with the ``current`` link agreeing with the record.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.agent.activation import ActivationRecord, ActivationStore, Stage
from edgefleet.agent.artifacts import ArtifactCache
from edgefleet.agent.desired import Desired
from edgefleet.agent.reconcile import Reconciler
from edgefleet.bundle import Bundle, public_key_hex, write_bundle


class FakeRunner:
    """Stands in for ``Serving``: remembers what it staged and serves."""

    def __init__(self, refuse: str = "") -> None:
        self.refuse = refuse
        self.staged = ""
        self.serving = ""
        self.aborted = 0
        self.unloaded: list[bool] = []

    def stage(self, bundle: Bundle, runtime: str = "") -> str | None:
        if self.refuse:
            return self.refuse
        self.staged = bundle.variant_id
        return None

    def swap(self) -> None:
        if self.staged:
            self.serving, self.staged = self.staged, ""

    def abort(self) -> None:
        if self.staged:
            self.aborted += 1
        self.staged = ""

    def unload(self) -> None:
        self.abort()
        self.serving = ""
        self.unloaded.append(True)


KEY = Ed25519PrivateKey.generate()
KEYS = [public_key_hex(KEY.public_key())]


def add_bundle(cache: ArtifactCache, n: int) -> str:
    """A signed bundle placed in the cache as a finished, verified download would be."""
    tmp = cache.root / f"build-{n}"
    vid = write_bundle(tmp, {"name": f"v{n}"}, {"weights.bin": bytes([n]) * 64}, KEY)
    tmp.rename(cache.variants_dir / vid)
    return vid


def links(cache: ArtifactCache) -> tuple[str, str]:
    out = []
    for name in ("current", "previous"):
        try:
            out.append(Path(os.readlink(cache.root / name)).name)
        except OSError:
            out.append("")
    return out[0], out[1]


def reconcile(rec: Reconciler, desired: Desired) -> Any:
    # the bundle is already cached, so the fetch never touches the (absent) stub
    return asyncio.run(rec.reconcile(desired, None, ()))  # type: ignore[arg-type]


def assert_settled(cache: ArtifactCache) -> ActivationRecord:
    record = cache.activation()
    assert record.stage == Stage.IDLE, record
    assert links(cache) == (record.variant, record.previous)
    assert cache.current() == record.variant
    return record


@pytest.fixture
def two(tmp_path: Path) -> tuple[ArtifactCache, str, str]:
    cache = ArtifactCache(tmp_path / "agent", KEYS)
    a, b = add_bundle(cache, 1), add_bundle(cache, 2)
    cache.activate(a, runtime="onnxruntime", generation=1)
    return cache, a, b


def test_the_stages_are_persisted_in_order(two: tuple[ArtifactCache, str, str]) -> None:
    cache, a, b = two
    runner = FakeRunner()
    rec = Reconciler(cache, wait_seconds=None, runner=runner)
    seen: list[Stage] = []
    write = cache.store.write

    def spy(record: ActivationRecord) -> None:
        seen.append(record.stage)
        write(record)

    cache.store.write = spy  # type: ignore[method-assign]
    status = reconcile(rec, Desired(generation=2, variant_id=b, runtime="torch"))
    assert seen == [Stage.FETCH, Stage.VERIFY, Stage.STAGE, Stage.COMMIT, Stage.IDLE]
    assert (status.active_variant, status.previous_variant) == (b, a)
    assert runner.serving == b
    record = assert_settled(cache)
    assert (record.variant, record.previous, record.runtime, record.generation) == (
        b,
        a,
        "torch",
        2,
    )
    # one file, written atomically: nothing else next to it
    assert json.loads(cache.store.path.read_text())["stage"] == "idle"
    assert not [p for p in cache.root.iterdir() if p.name.startswith(".")]


def test_a_refusal_rolls_back_and_keeps_serving_the_old_variant(
    two: tuple[ArtifactCache, str, str],
) -> None:
    cache, a, b = two
    runner = FakeRunner(refuse="runtime mcu-sim not available")
    rec = Reconciler(cache, wait_seconds=None, runner=runner)
    status = reconcile(rec, Desired(generation=2, variant_id=b))
    assert (status.active_variant, status.failed_variant) == (a, b)
    assert "mcu-sim" in status.failure_reason
    record = assert_settled(cache)
    assert (record.variant, record.runtime) == (a, "onnxruntime")


def test_a_disk_error_in_the_commit_rolls_back_and_drops_the_staged_runtime(
    two: tuple[ArtifactCache, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, a, b = two
    runner = FakeRunner()
    rec = Reconciler(cache, wait_seconds=None, runner=runner)
    point = ActivationStore._point
    calls: list[str] = []

    def flaky(self: ActivationStore, name: str, variant_id: str) -> None:
        calls.append(name)
        if name == "current":
            raise OSError(28, "No space left on device")
        point(self, name, variant_id)

    monkeypatch.setattr(ActivationStore, "_point", flaky)
    status = reconcile(rec, Desired(generation=2, variant_id=b))
    monkeypatch.setattr(ActivationStore, "_point", point)
    assert calls[:2] == ["previous", "current"]  # previous moved, then the crash-like failure
    assert status.active_variant == a
    assert runner.serving == "" and runner.staged == "" and runner.aborted == 1  # never swapped
    record = assert_settled(cache)
    assert record.variant == a


# Every step of the A -> B activation that touches the disk, in order (a clean run).
STEPS = ["fetch", "verify", "stage", "commit", "link:previous", "link:current", "idle"]


def _activate_and_die_after(state_dir: Path, step: int, b: str) -> None:
    """In a forked child: activate ``b``; ``os._exit`` right after disk step ``step``."""
    code = 3
    try:
        done: list[str] = []

        def crash_point(what: str) -> None:
            done.append(what)
            if len(done) == step:
                os._exit(9)  # the power cut: no rollback, no finally, no flush

        write, point = ActivationStore.write, ActivationStore._point

        def dying_write(self: ActivationStore, record: ActivationRecord) -> None:
            write(self, record)
            crash_point(record.stage.value)

        def dying_point(self: ActivationStore, name: str, variant_id: str) -> None:
            point(self, name, variant_id)
            crash_point(f"link:{name}")

        ActivationStore.write = dying_write  # type: ignore[method-assign]
        ActivationStore._point = dying_point  # type: ignore[method-assign]
        cache = ArtifactCache(state_dir, KEYS)
        rec = Reconciler(cache, wait_seconds=None, runner=FakeRunner())
        reconcile(rec, Desired(generation=2, variant_id=b, runtime="torch"))
        code = 0 if done == STEPS else 4
    finally:
        os._exit(code)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_crash_points_are_every_disk_step_of_an_activation(
    two: tuple[ArtifactCache, str, str],
) -> None:
    cache, _, b = two
    pid = os.fork()
    if pid == 0:
        _activate_and_die_after(cache.root.parent, 0, b)  # step 0: never dies
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the disk steps are not STEPS"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("step", range(1, len(STEPS) + 1), ids=STEPS)
def test_a_crash_after_any_step_resumes_or_rolls_back_never_half(
    two: tuple[ArtifactCache, str, str], step: int
) -> None:
    cache, a, b = two
    pid = os.fork()
    if pid == 0:
        _activate_and_die_after(cache.root.parent, step, b)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9, "the child did not die where it was told"

    # the agent restarts: a new cache and reconciler over the same state dir
    cache = ArtifactCache(cache.root.parent, KEYS)
    runner = FakeRunner()
    rec = Reconciler(cache, wait_seconds=None, runner=runner)
    record = assert_settled(cache)
    committed = step >= STEPS.index("commit") + 1
    if committed:  # the commit was on disk: it is finished
        assert (record.variant, record.previous, record.runtime) == (b, a, "torch")
    else:  # anything earlier is undone: the old variant, as it was
        assert (record.variant, record.previous, record.runtime) == (a, "", "onnxruntime")
    assert cache.load_current() is not None  # what the record names is a whole bundle
    # level-triggered: the next heartbeat finishes the job either way
    status_after = reconcile(rec, Desired(generation=2, variant_id=b, runtime="torch"))
    assert (status_after.active_variant, status_after.previous_variant) == (b, a)
    assert runner.serving == ("" if committed else b)  # already committed: nothing to stage
    assert_settled(cache)


@pytest.mark.parametrize(
    ("stage", "moved_links", "expect"),
    [
        (Stage.FETCH, False, "a"),
        (Stage.VERIFY, False, "a"),
        (Stage.STAGE, False, "a"),
        (Stage.COMMIT, False, "b"),
        (Stage.COMMIT, True, "b"),
        (Stage.ROLLBACK, True, "a"),  # a commit that failed half-way and was being undone
    ],
)
def test_a_record_left_at_any_stage_is_recovered_by_a_new_reconciler(
    two: tuple[ArtifactCache, str, str], stage: Stage, moved_links: bool, expect: str
) -> None:
    cache, a, b = two
    store = cache.store
    store.write(ActivationRecord(stage, a, "", 2, "onnxruntime", b, "torch"))
    if moved_links:
        store._point("previous", a)
        store._point("current", b)
    # a reader (a checker process) sees the record's variant, whatever the links say
    assert cache.current() == a
    Reconciler(ArtifactCache(cache.root.parent, KEYS), runner=FakeRunner())
    record = assert_settled(cache)
    assert record.variant == {"a": a, "b": b}[expect]


def test_a_commit_of_a_vanished_bundle_rolls_back(two: tuple[ArtifactCache, str, str]) -> None:
    cache, a, _ = two
    gone = "ef" * 32
    cache.store.write(ActivationRecord(Stage.COMMIT, a, "", 2, "", gone, ""))
    Reconciler(cache)
    assert assert_settled(cache).variant == a


def test_serving_nothing_is_a_commit_too(two: tuple[ArtifactCache, str, str]) -> None:
    cache, a, _ = two
    runner = FakeRunner()
    rec = Reconciler(cache, runner=runner)
    status = reconcile(rec, Desired(generation=5))
    assert status.active_variant == "" and runner.unloaded
    record = assert_settled(cache)
    assert (record.variant, record.previous, record.generation) == ("", a, 5)
    assert not (cache.root / "current").is_symlink()
    # a crash half-way through "serve nothing" finishes it on restart
    cache.activate(a)
    cache.store.write(ActivationRecord(Stage.COMMIT, a, "", 6, "", "", ""))
    Reconciler(ArtifactCache(cache.root.parent, KEYS))
    assert assert_settled(cache).variant == ""


def test_rollback_to_the_previous_variant_goes_through_the_runner(
    two: tuple[ArtifactCache, str, str],
) -> None:
    cache, a, b = two
    runner = FakeRunner()
    rec = Reconciler(cache, wait_seconds=None, runner=runner)
    reconcile(rec, Desired(generation=2, variant_id=b))
    assert rec.machine.rollback() == a
    assert runner.serving == a
    record = assert_settled(cache)
    assert (record.variant, record.previous) == (a, b)


def test_a_state_dir_from_before_the_record_is_read_from_its_links(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path, KEYS)
    a, b = add_bundle(cache, 1), add_bundle(cache, 2)
    cache.store._point("previous", a)
    cache.store._point("current", b)
    (tmp_path / "serving.json").write_text(json.dumps({"variant_id": b, "runtime": "torch"}))
    assert not cache.store.path.exists()
    assert (cache.current(), cache.previous()) == (b, a)  # reading writes nothing
    assert not cache.store.path.exists()
    Reconciler(cache)  # the agent starts: the record is written from the links
    record = assert_settled(cache)
    assert (record.variant, record.previous, record.runtime) == (b, a, "torch")
