"""The build job's body: what an ``edgefleet worker`` runs for each queued build.

RQ runs :func:`run_build` in a forked work horse (see ``edgefleet.coordinator.jobs`` for why
RQ): it opens the variant store the worker was started with (:func:`configure`, before the
fork), loads the model, runs the existing build code (``edgefleet.modelops.build``) and reports
progress in ``job.meta`` for any replica to stream.

Retries without duplicate rows: each finished recipe is recorded in ``job.meta["done"]`` (its
variant id) right after the store listed it, and a retried job (a worker killed, a timeout)
builds only the recipes not yet done. A recipe cut off mid-way leaves nothing listed: the store
renames a complete bundle into place and adds the index entry last.

A model uploaded over the API (``models add`` with a coordinator) is *pending* until its base
is built: the job builds it first (``edgefleet.modelops.register_upload``), then the recipes.

Errors of the request itself (an unknown model, a recipe that does not parse or apply, data
that cannot load) fail the job at once with one line in ``job.meta["error"]``: retrying them
would only fail again. So does the job's timeout (``models build --timeout``; RQ raises it in
the horse when the attempt's time is up): the same build would run out of time again, and a
timeout that tripled silently with retries would not be the limit the operator set. Anything
else (a killed horse, a crash) is retried by RQ (``Retry(max=2)``).

``EDGEFLEET_BUILD_STEP_DELAY`` (seconds, default 0) sleeps after every progress step. It exists
for tests and demonstrations only (a build of a tiny model takes under a second, too short to
kill a worker in the middle of it on purpose); the delay is spent inside the real build, between
its real steps, so what is killed is a real build with its store writes around it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from edgefleet.variant_store import StoreError, VariantStore

__all__ = ["StoreConfig", "configure", "open_build_store", "run_build"]

STEP_DELAY_ENV = "EDGEFLEET_BUILD_STEP_DELAY"


@dataclass(frozen=True)
class StoreConfig:
    """Where this worker's variants live: the data dir, and Redis when the store is shared."""

    data_dir: Path
    redis_url: str | None = None  # set: the shared (Redis) store every replica reads
    signing_key_path: Path | None = None  # the fleet's key (--fleet-dir); None: the data dir's


_config: StoreConfig | None = None


def configure(config: StoreConfig) -> None:
    """Called by the worker before it forks horses (they inherit it)."""
    global _config
    _config = config


def open_build_store(config: StoreConfig) -> VariantStore:
    """The one place that picks the store implementation (switching is this function)."""
    try:
        from edgefleet.coordinator.shared_store import open_store
    except ImportError:  # the shared store is not part of this install: the data dir alone
        store = VariantStore(config.data_dir)
        if config.signing_key_path is not None:
            store.key_path = config.signing_key_path
        return store
    return open_store(config.data_dir, config.redis_url, signing_key_path=config.signing_key_path)


def _save_meta(job: Job) -> None:
    job.save_meta()  # type: ignore[no-untyped-call]


class _Reporter:
    """Progress into ``job.meta`` (step = recipes done of total, message = the stage)."""

    def __init__(self, job: Job | None, total: int, done: int) -> None:
        self.job = job
        self.total = total
        self.step = done
        self.delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)

    def write(self, message: str, **extra: Any) -> None:
        if self.job is None:
            return
        self.job.meta["progress"] = {"step": self.step, "total": self.total, "message": message}
        self.job.meta.update(extra)
        _save_meta(self.job)

    def __call__(self, label: str, stage: str) -> None:
        if stage == "done":
            self.step += 1
            self.write(f"built {label}")
        else:
            self.write(f"{label}: {stage}")
        if self.delay > 0:
            time.sleep(self.delay)


class _RecordingStore:
    """The store, remembering the id of the last bundle put (so ``done`` knows its variant)."""

    def __init__(self, store: VariantStore) -> None:
        self._store = store
        self.last_put = ""

    def put(self, manifest_body: Mapping[str, Any], files: Mapping[str, bytes]) -> str:
        self.last_put = self._store.put(manifest_body, files)
        return self.last_put

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _user_errors() -> tuple[type[BaseException], ...]:
    from edgefleet.bundle import BundleError
    from edgefleet.modelops.data import DatasetError
    from edgefleet.modelops.recipes import RecipeError
    from edgefleet.zoo import ArchitectureError

    return (StoreError, RecipeError, DatasetError, BundleError, ArchitectureError)


def run_build(model: str, recipes: list[str], latency_runs: int) -> list[str]:
    """Build ``recipes`` (empty: the defaults that apply) of ``model``; return variant ids."""
    job = get_current_job()
    meta = job.meta if job is not None else {}
    attempt = int(meta.get("attempt", 0)) + 1
    if job is not None:
        job.meta["attempt"] = attempt
        job.meta.pop("error", None)
        progress = dict(job.meta.get("progress") or {})  # not the dead worker's last stage
        job.meta["progress"] = {**progress, "message": "starting" if attempt == 1 else "retrying"}
        _save_meta(job)
    if _config is None:
        raise RuntimeError("run_build runs on an `edgefleet worker` (no store configured)")
    try:
        return _build(job, model, recipes, latency_runs)
    except JobTimeoutException:
        if job is not None:
            job.meta["error"] = (
                f"timed out after {job.timeout} s (its --timeout; the build was stopped, "
                "nothing partial is listed)"
            )
            job.retries_left = 0  # it would run out of time again
            _save_meta(job)
        raise
    except _user_errors() as exc:
        if job is not None:
            job.meta["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            job.retries_left = 0  # the same request would fail the same way
            _save_meta(job)
        raise


def _build(job: Job | None, model: str, recipes: list[str], latency_runs: int) -> list[str]:
    from edgefleet.modelops.build import BuildOptions, build_variants
    from edgefleet.modelops.measure import LatencyConfig
    from edgefleet.modelops.recipes import parse_recipes

    assert _config is not None
    store = open_build_store(_config)
    if not store.model(model).base:  # uploaded over the API: its base is built here first
        _build_base(job, store, model)
    from edgefleet.modelops.lm_build import build_lm_recipes, is_lm_model, lm_recipes_to_build

    if is_lm_model(store, model):  # a language model: its own recipes, from its base graph
        todo_lm = lm_recipes_to_build(store, model, recipes or None)
        return build_lm_recipes(store, model, todo_lm, progress=_Reporter(job, len(todo_lm), 0))
    parsed = parse_recipes(recipes) if recipes else parse_recipes(_applicable(store, model))
    done: dict[str, str] = dict((job.meta.get("done") or {}) if job is not None else {})
    todo = [r for r in parsed if r.label not in done]
    report = _Reporter(job, len(parsed), len(parsed) - len(todo))
    recording = _RecordingStore(store)

    def progress(label: str, stage: str) -> None:
        if stage == "done":  # listed by the store: record it before saying so
            done[label] = recording.last_put or store.model(model).base
            recording.last_put = ""
            if job is not None:
                job.meta["done"] = dict(done)
        report(label, stage)

    report.write("resuming" if done else "loading", recipes=[r.label for r in parsed])
    if todo:
        options = BuildOptions(latency=LatencyConfig(runs=latency_runs))
        build_variants(recording, model, todo, options=options, progress=progress)  # type: ignore[arg-type]
    return [done[r.label] for r in parsed]


def _build_base(job: Job | None, store: VariantStore, model: str) -> None:
    """The base (fp32, measured, signed) of a model uploaded over the API (``models add``
    with a coordinator), by the store's own upload builder; a retry finds it built."""
    try:
        from edgefleet.modelops.register_upload import build_pending_base
    except ImportError:  # this install cannot build uploads
        raise StoreError(f"model {model!r} has no base variant to build from") from None
    report = _Reporter(job, 0, 0)

    def progress(label: str, stage: str) -> None:
        report.write(f"base model: {stage}")
        if report.delay > 0:
            time.sleep(report.delay)

    report.write("base model: loading")
    # the settings given at upload (epochs, frontend, latency runs) apply to the base
    build_pending_base(store, model, progress=progress)


def _applicable(store: VariantStore, name: str) -> list[str]:
    """The default recipes that apply to the model (what ``models build`` without
    ``--recipes`` builds locally)."""
    from edgefleet.modelops.applicable import default_recipes
    from edgefleet.modelops.build import load_torch_model
    from edgefleet.modelops.data import frontend_of, load_dataset
    from edgefleet.zoo import ArchitectureSpec

    entry = store.model(name)
    base = store.load(entry.base)
    spec = ArchitectureSpec.from_json(base.manifest["architecture"])
    data = load_dataset(entry.dataset, store.root, frontend=frontend_of(base.manifest))
    return default_recipes(load_torch_model(base), spec, data).recipes
