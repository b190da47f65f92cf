"""Measure an LM variant the way a device runs it: onnxruntime, the KV-cache graph, batch 1.

- **perplexity**: exp(mean next-byte NLL) on held-out ``context``-byte windows, each a prefill
  from an empty cache (the same windows for every variant, so the numbers compare); for a graph
  with an int8 cache (:mod:`edgefleet.modelops.lm_kv8`) each window is one byte of prefill and
  then one byte per step, as generation runs it, since a prefill alone never reads the cache
  back and would hide what quantizing it costs (``chunk`` does the same for any graph);
- **prefill tokens/s**: one prompt of ``prompt`` bytes through the graph at once;
- **decode tokens/s**: one byte per call, feeding the grown caches back (what generation does),
  from the median step; decode is what a user waits on, and it reads every weight once per token;
- **peak memory** at a context length: a fresh child process (only onnxruntime and numpy) loads
  the graph, prefills ``context - 1`` bytes and decodes one more; its peak RSS (``VmHWM``) minus
  its RSS before loading is the variant's footprint: weights as the runtime holds them, the KV
  cache at that context, the activations of the prefill and the session's arenas. A child, not
  this process, because a high-water mark never comes down: every variant needs its own.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.modelops.lm_kv8 import SCALE_BYTES, append_new, empty_kv8, is_kv8

__all__ = ["LMMeasurement", "kv_cache_bytes", "measure_lm", "peak_memory", "session"]


@dataclass(frozen=True)
class LMMeasurement:
    perplexity: float
    prefill_tok_s: float
    decode_tok_s: float
    #: context length -> peak RSS over the process baseline, bytes
    peak_bytes: dict[int, int]
    #: context length -> bytes of the KV cache alone at that length
    kv_bytes: dict[int, int]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["peak_bytes"] = {str(k): v for k, v in self.peak_bytes.items()}
        out["kv_bytes"] = {str(k): v for k, v in self.kv_bytes.items()}
        return out


def session(path: Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session; one intra-op thread by default (a device serves one user)."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _cache_shape(sess: Any) -> tuple[int, int, int, np.dtype[Any]]:
    inp = {i.name: i for i in sess.get_inputs()}["past_k"]
    layers, _, heads, _, head_dim = inp.shape
    if is_kv8(sess):  # positions first: (past, layers, batch, heads, head_dim)
        _, layers, _, heads, head_dim = inp.shape
    types = {"tensor(float16)": np.float16, "tensor(int8)": np.int8}
    dtype = types.get(inp.type, np.float32)
    return int(layers), int(heads), int(head_dim), np.dtype(dtype)


def _empty(sess: Any, batch: int) -> dict[str, npt.NDArray[Any]]:
    layers, heads, head_dim, dtype = _cache_shape(sess)
    if is_kv8(sess):
        return empty_kv8(layers, heads, head_dim, batch)
    z = np.zeros((layers, batch, heads, 0, head_dim), dtype=dtype)
    return {"past_k": z, "past_v": z}


def _grow(
    cache: dict[str, npt.NDArray[Any]], outputs: list[npt.NDArray[Any]]
) -> dict[str, npt.NDArray[Any]]:
    """The cache after a step: an int8 graph's new positions appended, a float graph's grown
    caches as returned."""
    if "past_k_scale" in cache:
        return append_new(cache, outputs)
    return {"past_k": outputs[1], "past_v": outputs[2]}


def kv_cache_bytes(sess: Any, context: int, batch: int = 1) -> int:
    """Keys and values of every layer at ``context`` positions, in the graph's cache dtype
    (an int8 cache's fp32 scales included)."""
    layers, heads, head_dim, dtype = _cache_shape(sess)
    scales = SCALE_BYTES if is_kv8(sess) else 0
    return 2 * layers * batch * heads * context * (head_dim * dtype.itemsize + scales)


def ort_perplexity(
    sess: Any, data: npt.NDArray[np.uint8], context: int, max_bytes: int, chunk: int = 0
) -> float:
    """Perplexity over ``context``-byte windows: one prefill each (``chunk`` 0), or ``chunk``
    bytes of prefill and then ``chunk`` bytes per step through the graph's cache."""
    n = min(data.size, max_bytes)
    windows = (n - 1) // context
    if windows < 1:
        raise ValueError(f"held-out text too short: {n} bytes for context {context}")
    rows = data[: windows * context + 1].astype(np.int64)
    x, y = rows[:-1].reshape(windows, context), rows[1:].reshape(windows, context)
    total = 0.0
    for i in range(0, windows, 16):
        xb, yb = x[i : i + 16], y[i : i + 16]
        if chunk:
            cache, parts = _empty(sess, len(xb)), []
            for j in range(0, context, chunk):
                out = sess.run(None, {"tokens": xb[:, j : j + chunk], **cache})
                cache = _grow(cache, out)
                parts.append(out[0])
            logits = np.concatenate(parts, axis=1)
        else:
            logits = sess.run(["logits"], {"tokens": xb, **_empty(sess, len(xb))})[0]
        z = logits.astype(np.float64)
        z -= z.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        total -= float(np.take_along_axis(logp, yb[..., None], axis=-1).sum())
    return math.exp(total / (windows * context))


def prefill_tok_s(sess: Any, prompt: npt.NDArray[np.int64], repeats: int = 5) -> float:
    feeds = {"tokens": prompt[None, :], **_empty(sess, 1)}
    sess.run(["logits"], feeds)  # warm-up: arenas and kernel selection
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(["logits"], feeds)
        times.append(time.perf_counter() - t)
    return prompt.size / float(np.median(times))


def decode_tok_s(sess: Any, prompt: npt.NDArray[np.int64], new_tokens: int) -> float:
    """Greedy decode of ``new_tokens`` bytes after a prefill of ``prompt``."""
    empty = _empty(sess, 1)
    out = sess.run(None, {"tokens": prompt[None, :], **empty})
    cache = _grow(empty, out)
    token = np.array([[int(out[0][0, -1].argmax())]], dtype=np.int64)
    sess.run(None, {"tokens": token, **cache})  # warm-up
    steps = []
    for _ in range(new_tokens):
        t = time.perf_counter()
        out = sess.run(None, {"tokens": token, **cache})
        steps.append(time.perf_counter() - t)
        # not timed: a device writes an int8 step's new row in place (agent.generation.KVCache)
        cache = _grow(cache, out)
        token[0, 0] = int(out[0][0, -1].argmax())
    # the median step: a shared host's preemptions land in a few steps, not in every one
    return 1.0 / float(np.median(steps))


_CHILD = r"""
import json, sys
import numpy as np
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0
import onnxruntime as ort
path, context, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
base = rss("VmRSS:")
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.log_severity_level = 3
s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
ins = {i.name: i for i in s.get_inputs()}
inp = ins["past_k"]
dt = {"tensor(float16)": np.float16, "tensor(int8)": np.int8}.get(inp.type, np.float32)
names = ("past_k", "past_k_scale", "past_v", "past_v_scale")
n = 0
if "past_k_scale" in ins:  # int8, positions first: buffers for the context, views fed (as the
    z = np.zeros((context, inp.shape[1], 1, inp.shape[3], inp.shape[4]), dtype=dt)  # agent)
    zs = np.zeros((*z.shape[:4], 1), np.float32)
    bufs = {"past_k": z, "past_k_scale": zs, "past_v": z.copy(), "past_v_scale": zs.copy()}
    feeds = {k: b[:0] for k, b in bufs.items()}
else:
    z = np.zeros((inp.shape[0], 1, inp.shape[2], 0, inp.shape[4]), dtype=dt)
    feeds = {"past_k": z, "past_v": z}
toks = (np.arange(context - 1, dtype=np.int64) * 7 % 251)[None, :]
step = chunk or toks.shape[1]
for j in range(0, toks.shape[1], step):
    out = s.run(None, {"tokens": toks[:, j : j + step], **feeds})
    if "past_k_scale" in ins:
        new = out[1].shape[0]
        for k, x in zip(names, out[1:]):
            bufs[k][n : n + new] = x
        n += new
        feeds = {k: b[:n] for k, b in bufs.items()}
    else:
        feeds = {"past_k": out[1], "past_v": out[2]}
s.run(None, {"tokens": toks[:, -1:], **feeds})
print(json.dumps({"peak": rss("VmHWM:") - base}))
"""


def peak_memory(path: Path, context: int, chunk: int = 0) -> int:
    """Peak RSS of a fresh process serving ``path`` up to ``context`` bytes, over its baseline;
    the prompt in one prefill, or in ``chunk``-byte steps through the cache (as a device with
    a long prompt runs it: then the cache, not one prefill's activations, is what grows)."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(context), str(chunk)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"peak-memory probe of {path.name} at {context} failed: {tail}")
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak"])


def measure_lm(
    path: Path,
    test: npt.NDArray[np.uint8],
    *,
    context: int,
    eval_bytes: int = 65536,
    prompt: int = 128,
    new_tokens: int = 64,
    contexts: tuple[int, ...] = (128, 1024),
) -> LMMeasurement:
    """Every number :mod:`benchmarks.lm` reports for one variant graph."""
    sess = session(path)
    ids = test[:prompt].astype(np.int64)
    return LMMeasurement(
        perplexity=ort_perplexity(sess, test, context, eval_bytes, chunk=1 if is_kv8(sess) else 0),
        prefill_tok_s=prefill_tok_s(sess, ids),
        decode_tok_s=decode_tok_s(sess, ids[:16], new_tokens),
        peak_bytes={c: peak_memory(path, c) for c in contexts},
        kv_bytes={c: kv_cache_bytes(sess, c) for c in contexts},
    )
