"""Text generation on the device: a language-model variant's KV-cache graph, one token at a time.

Why here and not in the runtime: sampling (temperature, top-k, top-p, stop sequences, a seed)
is the same whichever runtime computes the logits, and it is the part callers tune, so it is
written once over a ``step(tokens, past_k, past_v) -> (logits, present_k, present_v)``
function. The graph is the one :mod:`edgefleet.modelops.lm_compress` builds (prefill is a
step with an empty cache, decode a step with one new token), so the agent needs only
onnxruntime and numpy: no torch, no tokenizer (the models are byte-level).

Every request field is checked before anything runs and a bad one is refused in one line
(:class:`InputError`, INVALID_ARGUMENT on the wire). Timing is measured here: time to first
token (prefill plus the first sample, what a user waits before anything appears) and the
decode rate over the tokens after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.agent.runtimes import InferenceError, InputError

__all__ = [
    "LANGUAGE_MODEL_TASK",
    "MAX_STOP",
    "MAX_TOKENS",
    "GenerateParams",
    "GeneratedToken",
    "NotLanguageModelError",
    "check_params",
    "generate",
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

Step = Callable[
    [npt.NDArray[np.int64], npt.NDArray[Any], npt.NDArray[Any]],
    tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]],
]


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
    kv_dtype: str  # "float32" or "float16"


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
    if kv not in ("float32", "float16"):
        raise ValueError(f"language_model.kv_dtype must be float32 or float16, got {kv!r}")
    return LMSpec(kv_dtype=str(kv), **out)


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
    dtype = np.float16 if spec.kv_dtype == "float16" else np.float32
    empty = np.zeros((spec.layers, 1, spec.heads, 0, spec.head_dim), dtype=dtype)
    start = time.perf_counter()
    tokens = np.frombuffer(p.prompt, dtype=np.uint8).astype(np.int64)[None, :]
    logits, k, v = step(tokens, empty, empty)
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
        logits, k, v = step(np.array([[token]], dtype=np.int64), k, v)
        positions += 1
