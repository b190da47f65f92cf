"""Text generation on the device: a language-model variant's KV-cache graph, one token at a time.

Why here and not in the runtime: sampling (temperature, top-k, top-p, stop sequences, a seed)
is the same whichever runtime computes the logits, and it is the part callers tune, so it is
written once over a ``step(feeds) -> outputs`` function (the graph's inputs by name, its
outputs in order). The graph is the one :mod:`edgefleet.modelops.lm_compress` builds (prefill
is a step with an empty cache, decode a step with one new token), so the agent needs only
onnxruntime and numpy: no torch, no tokenizer (the models are byte-level).

The cache is the manifest's ``language_model.kv_dtype``: a float32 or float16 graph takes
``past_k``/``past_v`` and returns the grown ``present_k``/``present_v``, which are fed back;
an ``int8`` graph takes the cache as int8 plus one fp32 scale per (position, layer, batch,
head), positions first, and returns only the step's new positions, quantized (``new_k``,
``new_k_scale``, ...). :class:`KVCache` writes them into buffers allocated once for the
context and feeds the graph views of the filled part (contiguous, since positions come first):
the device holds a quarter of the float cache's bytes (plus the scales), never copies the
cache to grow it, and never requantizes an old position.

Every request field is checked before anything runs and a bad one is refused in one line
(:class:`InputError`, INVALID_ARGUMENT on the wire). Timing is measured here: time to first
token (prefill plus the first sample, what a user waits before anything appears) and the
decode rate over the tokens after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.agent.runtimes import InferenceError, InputError

_INT8_CACHE = ("past_k", "past_k_scale", "past_v", "past_v_scale")

__all__ = [
    "LANGUAGE_MODEL_TASK",
    "MAX_STOP",
    "MAX_TOKENS",
    "GenerateParams",
    "GeneratedToken",
    "KVCache",
    "NotLanguageModelError",
    "check_params",
    "empty_cache",
    "generate",
    "grow_cache",
    "lm_io",
    "lm_spec",
    "sample",
]

#: the manifest ``task`` of a language-model bundle
LANGUAGE_MODEL_TASK = "language-model"
MAX_TOKENS = 4096
DEFAULT_MAX_TOKENS = 64
MAX_TEMPERATURE = 10.0
MAX_STOP = 8
MAX_STOP_BYTES = 64
MAX_PROMPT_BYTES = 64 * 1024

#: one run of the graph: its inputs by name -> its outputs in graph order (logits first)
Step = Callable[[Mapping[str, npt.NDArray[Any]]], Sequence[npt.NDArray[Any]]]
Cache = dict[str, npt.NDArray[Any]]
#: the KV-cache dtypes a language-model manifest may name
KV_DTYPES = ("float32", "float16", "int8")


class NotLanguageModelError(InferenceError):
    """The active variant is not a language model (FAILED_PRECONDITION: deploy one first)."""


@dataclass(frozen=True)
class LMSpec:
    """What the agent needs of a language-model manifest (``language_model`` section)."""

    vocab: int
    layers: int
    heads: int
    head_dim: int
    context: int
    kv_dtype: str  # one of KV_DTYPES


def lm_spec(manifest: Mapping[str, Any]) -> LMSpec | None:
    """The manifest's language-model facts, ``None`` for any other task; raises ValueError
    naming the field when a language-model manifest is malformed."""
    if manifest.get("task") != LANGUAGE_MODEL_TASK:
        return None
    lm = manifest.get("language_model")
    if not isinstance(lm, Mapping):
        raise ValueError("a language-model manifest needs a language_model object")
    out: dict[str, int] = {}
    for key in ("vocab", "layers", "heads", "head_dim", "context"):
        v = lm.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"language_model.{key} must be a positive integer, got {v!r}")
        out[key] = v
    kv = lm.get("kv_dtype", "float32")
    if kv not in KV_DTYPES:
        raise ValueError(
            f"language_model.kv_dtype must be {', '.join(KV_DTYPES)}, got {kv!r} "
            "(a newer cache format than this agent knows: upgrade the agent)"
        )
    return LMSpec(kv_dtype=str(kv), **out)


def lm_io(spec: LMSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The graph's input and output names for ``spec``'s cache (checked when a bundle loads)."""
    if spec.kv_dtype == "int8":
        return (
            ("tokens", "past_k", "past_k_scale", "past_v", "past_v_scale"),
            ("logits", "new_k", "new_k_scale", "new_v", "new_v_scale"),
        )
    return ("tokens", "past_k", "past_v"), ("logits", "present_k", "present_v")


def _int8_shapes(spec: LMSpec, positions: int, batch: int) -> dict[str, tuple[int, ...]]:
    vec = (positions, spec.layers, batch, spec.heads)
    return {n: (*vec, 1 if n.endswith("_scale") else spec.head_dim) for n in _INT8_CACHE}


def empty_cache(spec: LMSpec, batch: int = 1) -> Cache:
    """The cache feeds of a prefill: zero past positions, in the graph's cache dtype and layout
    (float: ``(layers, batch, heads, past, head_dim)``; int8: positions first, plus scales)."""
    if spec.kv_dtype == "int8":
        return {
            n: np.zeros(shape, np.float32 if n.endswith("_scale") else np.int8)
            for n, shape in _int8_shapes(spec, 0, batch).items()
        }
    z = np.zeros(
        (spec.layers, batch, spec.heads, 0, spec.head_dim),
        np.float16 if spec.kv_dtype == "float16" else np.float32,
    )
    return {"past_k": z, "past_v": z}


def grow_cache(spec: LMSpec, cache: Cache, outputs: Sequence[npt.NDArray[Any]]) -> Cache:
    """The cache after a step, as a new dict: a float graph's grown caches as returned; an int8
    graph's new positions appended to ``cache`` (a copy; :class:`KVCache` appends in place)."""
    if spec.kv_dtype != "int8":
        return {"past_k": outputs[1], "past_v": outputs[2]}
    grown = zip(_INT8_CACHE, outputs[1:5], strict=True)
    return {n: np.concatenate((cache[n], x), axis=0) for n, x in grown}


class KVCache:
    """The cache one generation carries between steps.

    A float graph returns the whole grown cache each step, which is kept as is. An int8 graph
    returns only the new positions: they are written into buffers for ``spec.context``
    positions, allocated once (untouched pages cost no RAM until written), and the graph is fed
    views of the first ``positions`` rows, so growing the cache copies nothing."""

    def __init__(self, spec: LMSpec, batch: int = 1) -> None:
        self.spec = spec
        self.positions = 0
        self._cache = empty_cache(spec, batch)
        self._buffers: Cache = {}
        if spec.kv_dtype == "int8":
            self._buffers = {
                n: np.zeros(shape, self._cache[n].dtype)
                for n, shape in _int8_shapes(spec, spec.context, batch).items()
            }

    def feeds(self) -> Cache:
        """The cache inputs of the next step."""
        if self._buffers:
            return {n: b[: self.positions] for n, b in self._buffers.items()}
        return self._cache

    def update(self, outputs: Sequence[npt.NDArray[Any]]) -> None:
        """Take a step's outputs (logits first, then the cache as :func:`lm_io` names it)."""
        if not self._buffers:
            self._cache = {"past_k": outputs[1], "past_v": outputs[2]}
            self.positions = int(outputs[1].shape[3])
            return
        end = self.positions + int(outputs[1].shape[0])
        if end > self.spec.context:
            raise InferenceError(
                f"the int8 cache holds {self.spec.context} positions; this step needs {end}"
            )
        for n, x in zip(_INT8_CACHE, outputs[1:5], strict=True):
            self._buffers[n][self.positions : end] = x
        self.positions = end


@dataclass(frozen=True)
class GenerateParams:
    prompt: bytes
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop: tuple[bytes, ...] = ()
    seed: int | None = None


def check_params(p: GenerateParams, context: int) -> GenerateParams:
    """``p`` with defaults filled in, or :class:`InputError` naming the first bad field."""
    if not p.prompt:
        raise InputError("prompt is empty (give text or bytes to continue)")
    if len(p.prompt) > MAX_PROMPT_BYTES:
        raise InputError(f"prompt is {len(p.prompt)} bytes (at most {MAX_PROMPT_BYTES})")
    if len(p.prompt) >= context:
        raise InputError(
            f"prompt is {len(p.prompt)} tokens but the variant holds {context} positions "
            "(leave room for at least one new token)"
        )
    max_tokens = p.max_tokens or DEFAULT_MAX_TOKENS
    if not 1 <= max_tokens <= MAX_TOKENS:
        raise InputError(f"max_tokens must be 1..{MAX_TOKENS}, got {p.max_tokens}")
    if not (np.isfinite(p.temperature) and 0.0 <= p.temperature <= MAX_TEMPERATURE):
        raise InputError(f"temperature must be 0..{MAX_TEMPERATURE:g} (0 = greedy)")
    if p.top_k < 0:
        raise InputError(f"top_k must be >= 0 (0 = all tokens), got {p.top_k}")
    top_p = p.top_p or 1.0
    if not (np.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise InputError(f"top_p must be in (0, 1] (0 = 1), got {p.top_p:g}")
    if len(p.stop) > MAX_STOP:
        raise InputError(f"{len(p.stop)} stop sequences (at most {MAX_STOP})")
    for s in p.stop:
        if not 1 <= len(s) <= MAX_STOP_BYTES:
            raise InputError(f"a stop sequence must be 1..{MAX_STOP_BYTES} bytes, got {len(s)}")
    if p.seed is not None and not 0 <= p.seed < 2**64:
        raise InputError("seed must fit in 64 bits")
    return GenerateParams(p.prompt, max_tokens, p.temperature, p.top_k, top_p, p.stop, p.seed)


def sample(
    logits: npt.NDArray[Any],
    temperature: float,
    top_k: int,
    top_p: float,
    rng: np.random.Generator,
) -> int:
    """The next token from one position's logits: greedy at temperature 0, else softmax at
    ``temperature`` over the ``top_k`` most likely tokens, cut to the smallest set whose
    probability reaches ``top_p`` (nucleus). Ties break to the lowest token id."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    if temperature == 0.0:
        return int(np.argmax(x))
    order = np.argsort(-x, kind="stable")
    if 0 < top_k < order.size:
        order = order[:top_k]
    z = x[order] / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return int(order[rng.choice(order.size, p=probs)])


@dataclass(frozen=True)
class GeneratedToken:
    data: bytes
    index: int
    #: set on the last token: "length", "stop" or "context"
    finish_reason: str = ""
    time_to_first_token_ms: float = 0.0
    tokens_per_second: float = 0.0


def generate(
    step: Step, spec: LMSpec, p: GenerateParams, cancelled: Callable[[], bool] = lambda: False
) -> Iterator[GeneratedToken]:
    """Prefill the prompt, then decode one token per step, yielding each as it is sampled.

    Stops at ``max_tokens``, when the output ends with a stop sequence (the stop bytes are
    part of the output: a byte-level model emits them one at a time, so the caller has seen
    them already), or when the cache holds ``spec.context`` positions.
    """
    rng = np.random.default_rng(p.seed)
    cache = KVCache(spec)
    start = time.perf_counter()
    tokens = np.frombuffer(p.prompt, dtype=np.uint8).astype(np.int64)[None, :]
    outputs = step({"tokens": tokens, **cache.feeds()})
    logits = outputs[0]
    cache.update(outputs)
    positions = tokens.shape[1]
    out = bytearray()
    first_at = 0.0
    for i in range(p.max_tokens):
        token = sample(logits[0, -1], p.temperature, p.top_k, p.top_p, rng)
        now = time.perf_counter()
        if i == 0:
            first_at = now
        data = bytes([token]) if token < 256 else b""
        out += data
        reason = ""
        if any(out.endswith(s) for s in p.stop):
            reason = "stop"
        elif i + 1 == p.max_tokens:
            reason = "length"
        elif positions + 1 >= spec.context:
            reason = "context"
        if reason:
            rate = i / (now - first_at) if i and now > first_at else 0.0
            yield GeneratedToken(data, i, reason, (first_at - start) * 1000.0, rate)
            return
        yield GeneratedToken(data, i)
        if cancelled():
            return
        outputs = step({"tokens": np.array([[token]], dtype=np.int64), **cache.feeds()})
        logits = outputs[0]
        cache.update(outputs)
        positions += 1
