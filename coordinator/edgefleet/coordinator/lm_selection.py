"""Selection for language models: which LM variant a device runs, and the longest context it holds.

A classifier's footprint is fixed; an LM's grows with every token it keeps: the KV cache holds
keys and values of every layer for every position. So an LM variant has no single "fits": it fits
*up to a context length*, and that length is set by whichever budget binds first:

- **ram**: RAM >= weights + KV cache(context, batch) + activations(context) + the runtime's own
  memory (``RUNTIME_OVERHEAD_BYTES``, as for classifiers);
- **decode speed**: decoding is memory-bound -- every new token reads every weight and the whole
  KV cache once -- so tokens/s ~= efficiency x bandwidth / (weights + KV(context)). The device's
  bandwidth comes from the catalog (``edgefleet.catalog.MEMORY_BANDWIDTH_BYTES_S``); the
  efficiency (achieved / peak bandwidth) is calibrated from tokens/s measured on the build host
  (or on this device class, when one has reported), never guessed per device. The context is
  capped where the predicted speed falls below the policy's floor (a reader's pace);
- **model context**: the longest context the variant was trained and measured at.

The KV cache's bytes per position follow the variant's cache dtype: an int8 cache
(``+kv8`` recipes, :mod:`edgefleet.modelops.lm_kv8`) holds one byte per element plus an fp32
scale per head and layer, about a quarter of fp32's, so where RAM binds it reaches a longer
context with the same weights; the reason names the cache and, when the same weights with a
float cache were judged too, the context that one stopped at. Not where decode speed binds:
the CPU runtime has no int8-attention kernel for this graph, which dequantizes each layer's
cache to fp32 every step, so a decode step moves at least an fp32 cache's bytes
(``KV8_DECODE_FACTOR``; measured: int8-cache decode runs at 0.84-0.95x the fp32 graph's).

Policy among variants that reach the policy's minimum context: the lowest held-out perplexity;
among those within ``perplexity_tolerance`` of it, the longest context limit, then the fastest
predicted decode at that limit, then the fewest bytes. Microcontrollers are refused with the
reason: their runtimes (TFLite Micro, mcu-sim) run neither the attention/KV-cache graph nor
``MatMulNBits``, and their SRAM is smaller than any variant's weights plus a cache.

Plain objects only (no Redis, gRPC or onnxruntime), like :mod:`variant_selection`, whose runtime
overheads and byte formatting this module shares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edgefleet.catalog import memory_bandwidth
from edgefleet.coordinator.variant_selection import RUNTIME_OVERHEAD_BYTES, human_bytes
from edgefleet.profiles import DeviceProfile

__all__ = [
    "DEFAULT_EFFICIENCY",
    "SMOLLM2_135M",
    "LMFacts",
    "LMPolicy",
    "LMSelection",
    "LMShape",
    "LMVerdict",
    "explain_line",
    "facts_from_benchmark",
    "judge_lm",
    "predict_decode_tok_s",
    "scale_facts",
    "select_lm",
]

#: bytes of the fp32 scale an int8 cache keeps per (layer, head, position), for K and for V
KV_SCALE_BYTES = 4
#: what a decode step moves through an int8 cache, per byte it stores: the graph dequantizes
#: every layer's cache to fp32 (4 bytes per element) each step
KV8_DECODE_FACTOR = 4
#: achieved / peak DRAM bandwidth when nothing was measured (llama.cpp-class decoders reach
#: roughly half of the theoretical figure on phones and Pis)
DEFAULT_EFFICIENCY = 0.5
BUDGET_MODEL = "model context"
BUDGET_RAM = "ram"
BUDGET_DECODE = "decode speed"


@dataclass(frozen=True)
class LMFacts:
    """What LM selection needs to know about one variant (measured at build time)."""

    id: str
    recipe: str
    #: the device precision its compute needs (weight-only int8/int4 dequantize into fp32)
    precision: str
    bundle_bytes: int
    #: resident weight bytes (the graph as the runtime holds it)
    weight_bytes: int
    #: KV cache bytes per position at batch 1 (2 x layers x kv heads x head dim x dtype)
    kv_bytes_per_token: int
    #: activations and runtime arenas beyond weights and cache: fixed + per position
    activation_bytes: int
    activation_bytes_per_token: int
    perplexity: float
    max_context: int
    runtimes: tuple[str, ...] = ("onnxruntime",)
    #: achieved / peak bandwidth of this variant's decode, calibrated on the build host
    decode_efficiency: float = DEFAULT_EFFICIENCY
    #: profile name -> (decode tokens/s, at context) reported by devices of that class
    measured_decode: Mapping[str, tuple[float, int]] = field(default_factory=dict)
    #: the cache's element type: float32, float16 or int8 (+ an fp32 scale per head vector)
    kv_dtype: str = "float32"

    @property
    def kv_decode_bytes_per_token(self) -> int:
        """What a decode step moves per cached position (an int8 cache: dequantized to fp32)."""
        factor = KV8_DECODE_FACTOR if self.kv_dtype == "int8" else 1
        return self.kv_bytes_per_token * factor

    def bytes_per_token(self, context: int, batch: int = 1) -> int:
        """What one decode step reads: every weight, and the cache at ``context``."""
        return self.weight_bytes + self.kv_decode_bytes_per_token * context * batch


@dataclass(frozen=True)
class LMPolicy:
    #: relative: variants within 2 % of the best perplexity count as equally good
    perplexity_tolerance: float = 0.02
    #: below this predicted decode speed the context is not offered: about reading speed
    #: (~4 words/s is ~5 BPE tokens/s; a byte-level model's bytes make it a strict floor)
    min_decode_tok_s: float = 5.0
    #: a variant that cannot hold this many positions does not fit at all
    min_context: int = 64
    batch: int = 1


@dataclass(frozen=True)
class LMVerdict:
    facts: LMFacts
    runtime: str | None
    context_limit: int
    budget: str  # which budget set the limit
    predicted_decode_tok_s: float | None  # at the context limit
    ram_need_bytes: int  # at the context limit
    failures: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class LMSelection:
    profile: str
    winner: LMVerdict | None
    verdicts: tuple[LMVerdict, ...]
    reason: str

    def to_json(self) -> dict[str, Any]:
        w = self.winner
        return {
            "profile": self.profile,
            "variant": w.facts.recipe if w else None,
            "context_limit": w.context_limit if w else 0,
            "budget": w.budget if w else None,
            "predicted_decode_tok_s": w.predicted_decode_tok_s if w else None,
            "ram_need_bytes": w.ram_need_bytes if w else None,
            "reason": self.reason,
        }


def _efficiency(f: LMFacts, profile: DeviceProfile, bandwidth: int) -> float:
    """Measured on this device class if reported, else the build host's calibration."""
    seen = f.measured_decode.get(profile.name)
    if seen is not None:
        tok_s, context = seen
        return min(1.0, tok_s * f.bytes_per_token(context) / bandwidth)
    return f.decode_efficiency


def predict_decode_tok_s(
    f: LMFacts, profile: DeviceProfile, context: int, batch: int = 1
) -> float | None:
    """Memory-bound decode speed at ``context``; ``None`` without a known bandwidth."""
    bw = memory_bandwidth(profile.name)
    if bw is None:
        return None
    return _efficiency(f, profile, bw) * bw / f.bytes_per_token(context, batch)


def _ram_need(f: LMFacts, runtime: str, context: int, batch: int) -> int:
    per = (f.kv_bytes_per_token + f.activation_bytes_per_token) * batch
    return (
        RUNTIME_OVERHEAD_BYTES.get(runtime, 0) + f.weight_bytes + f.activation_bytes + per * context
    )


def _limits(f: LMFacts, profile: DeviceProfile, runtime: str, policy: LMPolicy) -> dict[str, int]:
    """The longest context each budget allows (negative: not even the weights fit)."""
    b = policy.batch
    fixed = RUNTIME_OVERHEAD_BYTES.get(runtime, 0) + f.weight_bytes + f.activation_bytes
    per = (f.kv_bytes_per_token + f.activation_bytes_per_token) * b
    limits = {BUDGET_MODEL: f.max_context, BUDGET_RAM: (profile.ram_bytes - fixed) // max(1, per)}
    bw = memory_bandwidth(profile.name)
    if bw is not None:
        readable = _efficiency(f, profile, bw) * bw / policy.min_decode_tok_s
        limits[BUDGET_DECODE] = math.floor(
            (readable - f.weight_bytes) / max(1, f.kv_decode_bytes_per_token * b)
        )
    return limits


def judge_lm(profile: DeviceProfile, f: LMFacts, policy: LMPolicy) -> LMVerdict:
    """One variant on one device: its context limit, the budget that set it, or why it fails."""
    if profile.is_mcu:
        why = (
            f"mcu: {', '.join(profile.runtimes)} run no attention/KV-cache graph or MatMulNBits, "
            f"and {human_bytes(profile.largest_ram_region)} sram holds no LM variant "
            f"({f.recipe} needs {human_bytes(f.weight_bytes)} weights + "
            f"{human_bytes(f.kv_bytes_per_token)} per position)"
        )
        return LMVerdict(f, None, 0, BUDGET_RAM, None, 0, (why,))
    failures: list[str] = []
    if f.precision not in profile.precisions:
        failures.append(
            f"precision: {f.recipe} computes in {f.precision} "
            f"(device: {', '.join(profile.precisions)})"
        )
    if f.bundle_bytes > profile.storage_bytes:
        failures.append(
            f"storage: needs {human_bytes(f.bundle_bytes)}, has {human_bytes(profile.storage_bytes)}"
        )
    usable = [r for r in profile.runtimes if r in f.runtimes]
    if not usable:
        failures.append(
            f"runtime: variant has {', '.join(f.runtimes)}, device runs "
            f"{', '.join(profile.runtimes) or 'none'}"
        )
        return LMVerdict(f, None, 0, BUDGET_RAM, None, 0, tuple(failures))
    runtime = min(usable, key=lambda r: RUNTIME_OVERHEAD_BYTES.get(r, 0))
    limits = _limits(f, profile, runtime, policy)
    budget = min(limits, key=lambda k: (limits[k], k != BUDGET_MODEL))
    limit = max(0, limits[budget])
    speed = predict_decode_tok_s(f, profile, max(1, limit), policy.batch)
    if limits[BUDGET_RAM] < policy.min_context:  # every budget that is short is named
        need = _ram_need(f, runtime, policy.min_context, policy.batch)
        failures.append(
            f"ram: {policy.min_context} positions need {human_bytes(need)} (weights "
            f"{human_bytes(f.weight_bytes)} + KV {human_bytes(f.kv_bytes_per_token)}/position "
            f"+ activations + {runtime} {human_bytes(RUNTIME_OVERHEAD_BYTES.get(runtime, 0))}), "
            f"has {human_bytes(profile.ram_bytes)}"
        )
    if limits.get(BUDGET_DECODE, policy.min_context) < policy.min_context:
        slow = predict_decode_tok_s(f, profile, policy.min_context, policy.batch) or 0.0
        failures.append(
            f"decode speed: predicted {slow:.3g} tok/s at {policy.min_context} positions < "
            f"floor {policy.min_decode_tok_s:g} (reads "
            f"{human_bytes(f.bytes_per_token(policy.min_context))}/token at "
            f"{human_bytes(memory_bandwidth(profile.name) or 0)}/s peak)"
        )
    if f.max_context < policy.min_context:
        failures.append(f"model context: {f.max_context} < policy minimum {policy.min_context}")
    need = _ram_need(f, runtime, limit, policy.batch)
    return LMVerdict(f, runtime, limit, budget, speed, need, tuple(failures))


def select_lm(
    profile: DeviceProfile, variants: Sequence[LMFacts], policy: LMPolicy | None = None
) -> LMSelection:
    """Judge every variant and pick by the policy above; ``winner`` is None if none fits."""
    policy = policy or LMPolicy()
    verdicts = tuple(judge_lm(profile, f, policy) for f in variants)
    if not verdicts:
        return LMSelection(profile.name, None, verdicts, "the model has no LM variants yet")
    fits = [v for v in verdicts if v.fits]
    if not fits:
        closest = max(
            verdicts,
            key=lambda v: (-len(v.failures), v.context_limit, -v.facts.bytes_per_token(1)),
        )
        if profile.is_mcu:
            return LMSelection(profile.name, None, verdicts, f"refused: {closest.failures[0]}")
        return LMSelection(
            profile.name,
            None,
            verdicts,
            f"no LM variant fits; closest is {closest.facts.recipe}: {'; '.join(closest.failures)}",
        )
    best = min(v.facts.perplexity for v in fits)
    pool = [v for v in fits if v.facts.perplexity <= best * (1 + policy.perplexity_tolerance)]
    winner = min(
        pool,
        key=lambda v: (
            -v.context_limit,
            -(v.predicted_decode_tok_s or 0.0),
            v.facts.bundle_bytes,
            v.facts.id,
        ),
    )
    speed = winner.predicted_decode_tok_s
    cache = _cache_note(winner, verdicts)
    reason = (
        f"{len(fits)} of {len(verdicts)} variants fit; best perplexity {best:.3f}, {len(pool)} "
        f"within {policy.perplexity_tolerance:.0%}; chose {winner.facts.recipe} "
        f"(perplexity {winner.facts.perplexity:.3f}) for the longest context, "
        f"{winner.context_limit} positions, set by the {winner.budget} budget"
        + cache
        + (f"; decode ~{speed:.3g} tok/s predicted there" if speed is not None else "")
        + f"; needs {human_bytes(winner.ram_need_bytes)} of {human_bytes(profile.ram_bytes)} ram"
    )
    return LMSelection(profile.name, winner, verdicts, reason)


def _cache_note(winner: LMVerdict, verdicts: Sequence[LMVerdict]) -> str:
    """``; KV int8 ...`` for an int8 cache: its bytes per position, and the context the same
    weights with a float cache reach (when that variant was judged too)."""
    f = winner.facts
    if f.kv_dtype != "int8":
        return ""
    note = f"; KV cache int8, {human_bytes(f.kv_bytes_per_token)}/position"
    weights = f.recipe.removesuffix("+kv8")
    twin = next((v for v in verdicts if v.facts.recipe == weights), None)
    if twin is not None and twin.context_limit != winner.context_limit:
        note += (
            f" (with a {twin.facts.kv_dtype} cache, {weights} holds {twin.context_limit} "
            f"positions, set by {twin.budget})"
        )
    return note


def explain_line(sel: LMSelection) -> str:
    """One line for a table: variant, context limit and the budget that set it, or why none."""
    w = sel.winner
    if w is None:
        return sel.reason
    speed = f", ~{w.predicted_decode_tok_s:.3g} tok/s" if w.predicted_decode_tok_s else ""
    return (
        f"{w.facts.recipe:12} context {w.context_limit:>6} (set by {w.budget}){speed}, "
        f"ram {human_bytes(w.ram_need_bytes)}"
        + (
            f", KV int8 {human_bytes(w.facts.kv_bytes_per_token)}/pos"
            if w.facts.kv_dtype == "int8"
            else ""
        )
    )


@dataclass(frozen=True)
class LMShape:
    """An architecture's size, to scale measured facts to a model that was not trained here."""

    name: str
    parameters: int
    layers: int
    kv_heads: int
    head_dim: int
    heads: int
    max_context: int


#: SmolLM2-135M's published config (30 layers, 9 heads, 3 KV heads of 64, 8k positions)
SMOLLM2_135M = LMShape("smollm2-135m", 134_515_008, 30, 3, 64, 9, 8192)


def facts_from_benchmark(
    rows: Sequence[Mapping[str, Any]], model: Any, host_bandwidth: float, *, max_context: int
) -> list[LMFacts]:
    """LM facts from :mod:`benchmarks.lm` rows (bytes, kv, peaks at two contexts, tok/s).

    Activations are (peak - weights - KV) at the shorter measured context, held fixed: a device
    prefills a long prompt in chunks of that length, so its arenas stop at one chunk's (the
    one-shot prefill at the longer context, whose attention scores grow with its square, is
    reported by the benchmark but is not what a device runs). Efficiency is the measured decode
    tok/s x bytes read per token / the host's copy bandwidth.
    """
    out: list[LMFacts] = []
    for r in rows:
        peaks = {int(c): int(b) for c, b in r["peak_bytes"].items()}
        kv = {int(c): int(b) for c, b in r["kv_bytes"].items()}
        c1 = min(peaks)
        kv_tok = kv[c1] // c1
        decode_ctx = 48  # the benchmark decodes 64 tokens after a 16-token prompt
        kv_dtype = str(r.get("kv_dtype") or ("float16" if r["bits"] == 16 else "float32"))
        moved = kv_tok * (KV8_DECODE_FACTOR if kv_dtype == "int8" else 1)
        eff = r["decode_tok_s"] * (r["bytes"] + moved * decode_ctx) / host_bandwidth
        out.append(
            LMFacts(
                id=f"byte-lm-{r['recipe']}",
                recipe=str(r["recipe"]),
                precision="fp16" if r["bits"] == 16 else "fp32",
                bundle_bytes=int(r["bytes"]),
                weight_bytes=int(r["bytes"]),
                kv_bytes_per_token=kv_tok,
                activation_bytes=max(0, peaks[c1] - int(r["bytes"]) - kv[c1]),
                activation_bytes_per_token=0,
                perplexity=float(r["perplexity"]),
                max_context=max_context,
                decode_efficiency=min(1.0, eff),
                kv_dtype=kv_dtype,
            )
        )
    return out


def scale_facts(facts: Sequence[LMFacts], shape: LMShape, source_width: int) -> list[LMFacts]:
    """The same recipes at ``shape``'s size: bytes per weight and decode efficiency as measured,
    the KV cache from the shape (grouped-query heads, in each variant's cache dtype) and the
    measured activations scaled by the width ratio (``source_width``: the measured model's; 128
    in :mod:`benchmarks.lm`). Perplexities stay the measured ones: this is
    a sizing exercise for a model the size of SmolLM2-135M, not a trained model."""
    fp32_weights = max(f.weight_bytes for f in facts) / 4  # the fp32 graph: 4 bytes per weight
    width = shape.heads * shape.head_dim / source_width
    out = []
    for f in facts:
        weights = int(f.weight_bytes / fp32_weights * shape.parameters)
        kv_elem = {"float16": 2, "int8": 1}.get(f.kv_dtype, 4)
        scales = KV_SCALE_BYTES if f.kv_dtype == "int8" else 0
        out.append(
            replace(
                f,
                id=f"{shape.name}-{f.recipe}",
                bundle_bytes=weights,
                weight_bytes=weights,
                kv_bytes_per_token=2
                * shape.layers
                * shape.kv_heads
                * (shape.head_dim * kv_elem + scales),
                activation_bytes=int(f.activation_bytes * width),
                activation_bytes_per_token=int(f.activation_bytes_per_token * width),
                max_context=shape.max_context,
            )
        )
    return out


def facts_json(facts: Sequence[LMFacts]) -> list[dict[str, Any]]:
    return [{**asdict(f), "measured_decode": dict(f.measured_decode)} for f in facts]
