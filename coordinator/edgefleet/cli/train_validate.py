"""``train start``, step 1 of 4: validate -- everything refused before a run starts.

``train start`` is validate -> submit -> follow -> publish (``train_submit``, ``train_follow``,
``train_publish``), split so each step reads on its own and the first one provably has no side
effects: a usage error (exit 2) or a refusal (exit 1) leaves no run directory, no federation
and no model behind. :func:`validate` turns the options into a :class:`RunPlan` that the later
steps only carry out.

It also knows what the federated app can train (:data:`MODELS` at width 1.0 on
:data:`FL_DATASET`), which a registered MODEL must match exactly, and where run records live.
A registered *language model* (a byte-lm) trains differently: federated LoRA (rank-r adapters
on the devices' own text, the base frozen; :mod:`edgefleet.modelops.lm_lora`), planned as
:class:`LoRAPlan`; the classifier-only options (other strategies, update codecs, DP, SecAgg+,
``--rebuild``, ``--init``) are refused for it in one line each, and the ``--lora-*`` options
for anything else.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.cli.common import fail, usage_error
from edgefleet.cli.completion import complete_models

if TYPE_CHECKING:
    from edgefleet.variant_store import ModelEntry, VariantStore
    from edgefleet.zoo import ArchitectureSpec

MODELS = ("mlp", "ds-cnn", "resnet-8")
#: coordinator/edgefleet/flower/serverapp.py STRATEGIES (not imported: it loads Flower; a test keeps them equal)
FL_STRATEGIES = ("fedavg", "fedprox", "heterofl", "fedbuff")
DP_MODES = ("none", "server-fixed", "client-fixed")
#: the SuperNodes' shards and the held-out split are digits (coordinator/edgefleet/devtools/fl_local.py, clientapp)
FL_DATASET = "digits"
#: SecAgg+ hides a device's model in the sum of 3 or more: with 2, either device learns the
#: other's from the new global model, and its threshold (n-1) survives no dropout
#: (``edgefleet.flower.secagg``; the coordinator's ``fl.runs`` says the same)
SECURE_AGG_MIN_DEVICES = 3
SECURE_AGG_FEW = (
    "--secure-agg needs --min-devices 3 or more: with 2, either device learns the other's "
    "model from the sum"
)
#: ``edgefleet.lora.LORA_TARGETS`` (not imported: it loads torch; a test keeps them equal)
LORA_TARGETS = ("q", "k", "v", "proj", "up", "down")
#: federated LoRA's defaults: rank 8 and alpha 16 (PEFT's scale 2), q and v (Hu et al.), and
#: AdamW at 5e-3 for 20 local steps a round (``benchmarks/lm_lora.py``'s setting)
LORA_RANK, LORA_ALPHA, LORA_TARGETS_DEFAULT, LORA_STEPS, LORA_LR = 8, 16.0, "q,v", 20, 5e-3
#: the built-in text devices of ``--local N`` (``edgefleet.datasets.text_shards.DEVICE_PACKAGES``)
LORA_LOCAL_DEVICES = 6


@dataclass(frozen=True)
class StartOptions:
    """``train start``'s options as given (see the command for their help)."""

    model: str
    rounds: int
    strategy: str
    min_devices: int
    select: str
    init: Path | None
    superlink: str
    superlink_ca: Path | None
    local: int
    profiles: str
    lr: float
    local_epochs: int
    proximal_mu: float
    dp: str
    dp_noise: float
    dp_clip: float
    round_timeout: float
    name: str
    runs_dir: Path | None
    timeout: float
    redis_url: str
    register: bool
    rebuild: bool
    deploy: str
    deploy_strategy: str
    latency_runs: int
    data_dir: Path | None
    coordinator: str
    admin_token: str
    as_json: bool
    #: --strategy fedbuff: aggregate every BUFFER arrivals, drop updates staler than this
    buffer: int = 4
    max_staleness: int = 4
    #: --update-codec: none | q8 | q4 | topk:F (edgefleet.fl.update_codec)
    update_codec: str = "none"
    #: --secure-agg: Flower's SecAgg+ for every round
    secure_agg: bool = False
    #: federated LoRA of a registered LM (None: not given; a classifier refuses any of them)
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_targets: str | None = None
    steps: int | None = None
    #: whether --lr was given (LoRA's default learning rate is not a classifier's)
    lr_given: bool = True


@dataclass(frozen=True)
class LoRAPlan:
    """A federated LoRA run of a registered LM: the adapters' shape and the local training."""

    rank: int
    alpha: float
    targets: tuple[str, ...]
    steps: int
    lr: float

    def to_json(self) -> dict[str, object]:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}


def lora_given(o: StartOptions) -> list[str]:
    """The ``--lora-*``/``--steps`` options given, by flag (what a classifier refuses)."""
    given = {"--lora-rank": o.lora_rank, "--lora-alpha": o.lora_alpha,
             "--lora-targets": o.lora_targets, "--steps": o.steps}  # fmt: skip
    return [flag for flag, value in given.items() if value is not None]


def lora_plan(o: StartOptions) -> LoRAPlan:
    """The LoRA settings from the options (defaults for what is not given); usage errors for
    bad numbers and unknown targets, found before anything starts."""
    rank = LORA_RANK if o.lora_rank is None else o.lora_rank
    alpha = LORA_ALPHA if o.lora_alpha is None else o.lora_alpha
    steps = LORA_STEPS if o.steps is None else o.steps
    _check_numbers(
        lora_rank=(rank, 1, True), lora_alpha=(alpha, 0.0, False), steps=(steps, 1, True)
    )
    raw = LORA_TARGETS_DEFAULT if o.lora_targets is None else o.lora_targets
    targets = tuple(t.strip() for t in raw.split(",") if t.strip())
    bad = [t for t in targets if t not in LORA_TARGETS]
    if bad or not targets:
        raise usage_error(
            f"--lora-targets {raw!r}: choose among {', '.join(LORA_TARGETS)} "
            "(comma-separated, e.g. q,v)"
        )
    if len(set(targets)) != len(targets):
        raise usage_error(f"--lora-targets {raw!r} names a target twice")
    return LoRAPlan(int(rank), float(alpha), targets, int(steps), o.lr if o.lr_given else LORA_LR)


def check_lora_options(o: StartOptions, what: str) -> None:
    """Refuse, one line each, the options federated LoRA of ``what`` does not take.

    Why refused rather than ignored: each changes what a classifier run does (how updates are
    aggregated, encoded or noised, where the run starts, what is rebuilt), and silently dropping
    it would register a model trained otherwise than asked.
    """
    refused = [
        (o.strategy != "fedavg", f"--strategy {o.strategy}", "it averages adapters with fedavg"),
        (o.dp != "none", f"--dp {o.dp}", "Flower's DP wrappers are wired for classifier runs"),
        (o.update_codec != "none", f"--update-codec {o.update_codec}",
         "adapters already travel as a few percent of the model"),
        (o.secure_agg, "--secure-agg", "SecAgg+ is wired for classifier runs"),
        (o.rebuild, "--rebuild", "its result is published from the base's own variants"),
        (o.init is not None, "--init", "its adapters start at zero (B = 0: the base exactly)"),
    ]  # fmt: skip
    for bad, flag, why in refused:
        if bad:
            raise usage_error(f"{flag} does not apply to {what}: federated LoRA, {why}")
    if o.local > LORA_LOCAL_DEVICES:
        raise usage_error(
            f"--local {o.local}: federated LoRA has {LORA_LOCAL_DEVICES} built-in text devices "
            "(standard-library packages by source)"
        )


@dataclass(frozen=True)
class RunPlan:
    """A validated run: what to train, where it runs, where its record goes, what becomes of it."""

    options: StartOptions
    arch: str  #: the architecture the federated app trains
    store: VariantStore | None  #: opened when MODEL is registered or the result will be
    base_entry: ModelEntry | None  #: MODEL, when it is a registered model
    recipes: list[str]  #: --rebuild: the recipes of MODEL's variants
    register: bool  #: the result becomes model ``new_model``
    runs_dir: Path
    run_name: str
    run_dir: Path
    new_model: str
    superlink: str  #: "" with --local
    superlink_ca: Path | None
    redis_url: str  #: "" when rounds are not recorded in a fleet's state
    lora: LoRAPlan | None = None  #: MODEL is a registered LM: a federated LoRA run


def open_store(data_dir: Path | None) -> VariantStore:
    from edgefleet.variant_store import VariantStore, resolve_data_dir

    return VariantStore(resolve_data_dir(data_dir))


def resolve_runs_dir(runs_dir: Path | None, data_dir: Path | None) -> Path:
    """``--runs-dir``, else DATA_DIR/fl-runs; absolute, so a run's record does not depend on
    the directory the command was started from (the ServerApp writes to this path)."""
    from edgefleet.variant_store import resolve_data_dir

    return (runs_dir or resolve_data_dir(data_dir) / "fl-runs").absolute()


def complete_model(incomplete: str) -> list[str]:
    """Architectures the federated app trains, then registered models."""
    return [m for m in MODELS if m.startswith(incomplete)] + complete_models(incomplete)


def fl_spec(arch: str) -> ArchitectureSpec:
    """The zoo spec of what the federated app trains for ``arch`` (full width, digits)."""
    from edgefleet.flower import model as fl_model
    from edgefleet.zoo import ArchitectureSpec

    return ArchitectureSpec(arch, fl_model.arch_config(arch, 1.0), fl_model.INPUT_SHAPE)


def validate(o: StartOptions) -> RunPlan:
    """Check every option and resolve MODEL, the SuperLink and the run's name; start nothing.

    Usage errors (exit 2) come first, before the variant store is even read; then what needs
    the store or the coordinator's record (exit 1).
    """
    check_numbers(o)
    if o.model in MODELS and lora_given(o):
        raise usage_error(
            f"{', '.join(lora_given(o))}: LoRA fine-tunes a registered language model; "
            f"{o.model!r} is a classifier architecture"
        )
    if o.rebuild and o.model in MODELS:
        raise usage_error(
            f"--rebuild re-runs the recipes of a registered model's variants; {o.model!r} is an "
            "architecture (register it with `edgefleet models add`, build, then train that)"
        )
    store, base_entry, recipes, lora = None, None, [], None
    if o.model in MODELS:
        arch = o.model
    else:
        from edgefleet.variant_store import UnknownModelError

        store = open_store(o.data_dir)
        try:
            base_entry = store.model(o.model)
        except UnknownModelError:
            raise fail(
                f"unknown model {o.model!r}: neither an architecture the federated app trains "
                f"({', '.join(MODELS)}) nor a registered model (edgefleet models ls)"
            ) from None
        if is_lm_entry(base_entry.architecture):
            from edgefleet.fl.contract import LORA_ARCH

            check_lora_options(o, f"language model {o.model!r}")
            arch, lora = LORA_ARCH, lora_plan(o)
        elif lora_given(o):
            raise fail(
                f"{', '.join(lora_given(o))}: LoRA fine-tunes a registered language model; "
                f"{o.model!r} is not one"
            )
        else:
            arch = _fl_arch_of(base_entry)
            recipes = _recipes_of(store, base_entry) if o.rebuild else []
    if o.rebuild and not recipes:
        raise fail(f"--rebuild: model {o.model!r} has no compressed variants to rebuild")
    register = o.register or base_entry is not None or o.rebuild or bool(o.deploy)
    runs_dir = resolve_runs_dir(o.runs_dir, o.data_dir)
    superlink, superlink_ca, redis_url = o.superlink, o.superlink_ca, o.redis_url
    if not superlink and not o.local:
        superlink, superlink_ca, fleet_redis = _fleet_superlink(o.data_dir)
        # rounds go into the fleet's state (edgefleet_fl_* metrics) without being asked
        redis_url = redis_url or fleet_redis
    run_name = o.name or f"{o.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = (runs_dir / run_name).absolute()
    if run_dir.exists():
        raise fail(f"run {run_name!r} already exists in {runs_dir}")
    new_model = f"{o.model}-ft-{run_name}"
    if register:
        store = store or open_store(o.data_dir)
        if any(m.name == new_model for m in store.models()):
            raise fail(f"model {new_model!r} already exists in the variant store")
    return RunPlan(
        options=o, arch=arch, store=store, base_entry=base_entry, recipes=recipes,
        register=register, runs_dir=runs_dir, run_name=run_name, run_dir=run_dir,
        new_model=new_model, superlink=superlink, superlink_ca=superlink_ca, redis_url=redis_url,
        lora=lora,
    )  # fmt: skip


def is_lm_entry(architecture: dict[str, object]) -> bool:
    """Whether a registered model's architecture is a byte-lm (``lm_bundle.register_lm_model``)."""
    return str(architecture.get("arch") or architecture.get("name") or "") == "byte-lm"


def check_numbers(o: StartOptions) -> None:
    """The usage errors (exit 2) of ``train start``: numbers, targets and selectors; shared by
    the local path and the API path (``train_remote``), found before anything starts."""
    from edgefleet.selectors import ROLLOUT_FIELDS, parse_selection

    _check_numbers(
        lr=(o.lr, 0.0, False),
        local_epochs=(o.local_epochs, 1, True),
        proximal_mu=(o.proximal_mu, 0.0, True),
        dp_noise=(o.dp_noise, 0.0, True),
        dp_clip=(o.dp_clip, 0.0, False),
        round_timeout=(o.round_timeout, 0.0, False),
        timeout=(o.timeout, 0.0, False),
        local=(o.local, 0, True),
    )
    if o.superlink and o.local:
        raise usage_error("give at most one of --superlink HOST:PORT or --local N")
    _check_federation(o)
    try:
        parse_selection(o.select)  # a bad expression fails here, before anything starts
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    try:  # so does a bad --deploy selector (the same language), not after the training
        parse_selection(o.deploy, ROLLOUT_FIELDS)
    except ValueError as exc:
        raise usage_error(f"--deploy: {exc}") from None


def _check_federation(o: StartOptions) -> None:
    """FedBuff's numbers, the update codec and the combinations the ServerApp refuses."""
    from edgefleet.fl.update_codec import CodecError, parse_codec

    _check_numbers(buffer=(o.buffer, 1, True), max_staleness=(o.max_staleness, 0, True))
    try:
        codec = parse_codec(o.update_codec)
    except CodecError as exc:
        raise usage_error(f"--update-codec: {exc}") from None
    if o.dp != "none" and o.strategy in ("heterofl", "fedbuff"):
        raise usage_error(f"--dp applies to fedavg and fedprox, not --strategy {o.strategy}")
    if codec.lossy and o.dp == "client-fixed":
        raise usage_error("--dp client-fixed clips whole models: it needs --update-codec none")
    if o.secure_agg and (o.strategy not in ("fedavg", "fedprox") or codec.lossy or o.dp != "none"):
        raise usage_error(
            "--secure-agg runs fedavg/fedprox rounds with --update-codec none and no --dp"
        )
    if o.secure_agg and o.min_devices < SECURE_AGG_MIN_DEVICES:
        raise usage_error(SECURE_AGG_FEW)


def _check_numbers(**values: tuple[float, float, bool]) -> None:
    """Refuse NaN, infinities and out-of-range numbers before anything starts (exit 2).

    Each value is ``(value, lowest, lowest_allowed)``; names are the options' own.
    """
    for name, (value, low, inclusive) in values.items():
        flag = "--" + name.replace("_", "-")
        if not math.isfinite(value):
            raise usage_error(f"{flag} must be a finite number, got {value}")
        if value < low or (value == low and not inclusive):
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            raise usage_error(f"{flag} must be {bound}, got {value:g}")


def _fl_arch_of(entry: ModelEntry) -> str:
    """The FL architecture a registered model maps to, or a one-line refusal.

    Only exact matches are accepted: the run's weights are loaded into ``entry``'s spec with
    a strict state-dict check, and a near match (other width, other classes) would either fail
    after the run or, worse, register weights under a spec that does not describe them.
    """
    from edgefleet.zoo import ArchitectureSpec

    spec = ArchitectureSpec.from_json(entry.architecture)
    supported = f"federated fine-tuning trains {', '.join(MODELS)} at width 1.0 on {FL_DATASET}"
    if spec.name not in MODELS:
        raise fail(f"model {entry.name!r} is a {spec.name!r} architecture; {supported}")
    if entry.dataset != FL_DATASET:
        raise fail(f"model {entry.name!r} was trained on {entry.dataset!r}; {supported}")
    want = fl_spec(spec.name)
    if spec.low_rank or (spec.config, spec.input_shape) != (want.config, want.input_shape):
        raise fail(
            f"model {entry.name!r} is {spec.name} with config {json.dumps(spec.config)}, not the "
            f"one the federated app trains ({json.dumps(want.config)}); {supported}"
        )
    return spec.name


def _recipes_of(store: VariantStore, entry: ModelEntry) -> list[str]:
    """The recipe labels ``entry``'s variants were built with, in build order, from their
    manifests (each bundle verified on load); the base (``fp32``) is registered anyway."""
    labels: list[str] = []
    for vid in entry.variants:
        if vid == entry.base:
            continue
        label = str(store.load(vid).manifest.get("recipe_label") or "fp32")
        if label != "fp32" and label not in labels:
            labels.append(label)
    return labels


def _fleet_superlink(data_dir: Path | None) -> tuple[str, Path | None, str]:
    """The SuperLink the coordinator on this data dir runs, the CA that verifies it, and its
    embedded Redis ("" for an external one: pass --redis-url / EDGEFLEET_REDIS_URL)."""
    from edgefleet.variant_store import resolve_data_dir

    info_path = resolve_data_dir(data_dir) / "coordinator.json"
    if not info_path.exists():
        raise fail(
            f"no coordinator runs with data dir {info_path.parent} (start one, or give "
            "--superlink HOST:PORT, or --local N for simulated devices)"
        )
    info = json.loads(info_path.read_text())
    if not info.get("superlink"):
        raise fail(
            f"the coordinator at {info.get('address')} runs no SuperLink "
            "(restart it with --superlink local, or give --superlink HOST:PORT)"
        )
    ca = info.get("ca_cert")
    return str(info["superlink"]), Path(ca) if ca else None, str(info.get("embedded_redis") or "")
