"""Benchmark: a small byte-level LM compressed for the edge, every variant side by side.

    python -m benchmarks.lm [--dataset python-stdlib|PATH.txt] [--steps 300] [--dim 128]
                            [--data-dir DIR] [--contexts 128,1024]

Trains the zoo's ``byte-lm`` (2 layers, width 128, rotary positions, KV cache) on Python's own
standard-library sources (PSF-2.0; whole modules held out) or a user's text file, cached per data
dir, then builds fp32, fp16, weight-only int8 and int4 (groups 32/64/128, onnxruntime's
MatMulNBits) and two int8-KV-cache variants (fp32+kv8, int4-g32+kv8) from one KV-cache ONNX
graph and measures each with onnxruntime, one thread, batch 1:
held-out perplexity (per byte), bytes on disk, prefill and decode tokens/s, and peak RSS over a
fresh process's baseline at two context lengths (KV cache included; the cache's own bytes are
listed). An int8 cache's perplexity is measured one byte per step through the cache (a prefill
never reads it back), and so is its float twin's (``perplexity_stepwise``) for the comparison;
``transient_dequant_bytes`` is what one layer's dequantized float past plus its grown float
copy take for K and V during a step at each context (the rewrite dequantizes per layer, so that
is the transient, not the whole cache in float); ``peak_chunked_bytes`` is the peak at the longer
context with the prompt fed in training-window chunks through the cache, as a device runs a long
prompt (the one-shot prefill's activations, which grow with the square of the prompt, hide the
cache's bytes). Then LM selection (``edgefleet.coordinator.lm_selection``) picks a variant and a context
limit per catalog device from these facts (decode speed from each device's memory bandwidth,
calibrated by the tokens/s measured here), and again for a SmolLM2-135M-shaped model whose facts
are scaled from the measured bytes per weight, where the devices' budgets bind (once with every
variant, once without the int8-cache ones: what the int8 cache changes).
Prints a table and saves everything to ``benchmarks/results/lm.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "lm.json"
MIB = 1024 * 1024


def host_bandwidth() -> float:
    """This host's copy bandwidth (read + write bytes/s), the yardstick the measured decode
    speed is compared with to calibrate the memory-bound prediction (median of 5 copies)."""
    import numpy as np

    src = np.ones(32 * MIB, dtype=np.uint8)
    dst = np.empty_like(src)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return 2 * src.nbytes / float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lm", description=__doc__)
    parser.add_argument("--dataset", default="python-stdlib")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--context", type=int, default=128, help="training window, bytes")
    parser.add_argument("--contexts", default="128,1024", help="peak-memory context lengths")
    parser.add_argument("--eval-bytes", type=int, default=65536)
    parser.add_argument("--data-dir", type=Path, default=Path(".edgefleet/bench-lm"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)

    from edgefleet.datasets import DatasetError
    from edgefleet.datasets.text import load_text
    from edgefleet.modelops.lm_compress import KV8_RECIPES, LM_RECIPES, build_lm_variants
    from edgefleet.modelops.lm_measure import measure_lm, ort_perplexity, peak_memory, session
    from edgefleet.modelops.lm_train import LMTrainConfig, train_lm

    try:
        corpus = load_text(args.dataset, args.data_dir)
    except DatasetError as exc:
        parser.exit(2, f"error: {exc}\n")
    contexts = tuple(int(c) for c in args.contexts.split(","))
    config = LMTrainConfig(
        dim=args.dim, layers=args.layers, heads=args.dim // 64, context=args.context,
        steps=args.steps,
    )  # fmt: skip
    print(f"corpus: {corpus.source}; {corpus.train.size:,} train / {corpus.test.size:,} held-out "
          f"bytes; licence: {corpus.license}")  # fmt: skip
    trained = train_lm(corpus, config, args.data_dir, eval_bytes=args.eval_bytes)
    params = sum(p.numel() for p in trained.model.parameters())
    print(f"byte-lm {config.arch()} {params:,} parameters; trained in "
          f"{trained.metrics['train_seconds']:.0f} s{' (cached)' if trained.cached else ''}; "
          f"torch held-out perplexity {trained.metrics['perplexity']:.3f}")  # fmt: skip
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        variants = build_lm_variants(trained.model, Path(tmp), LM_RECIPES + KV8_RECIPES)
        print(f"built {len(variants)} variants in {time.perf_counter() - t:.0f} s")
        recipes = {v.recipe for v in variants}
        model = trained.model
        for v in variants:
            m = measure_lm(
                v.path, corpus.test, context=config.context, eval_bytes=args.eval_bytes,
                contexts=contexts,
            )  # fmt: skip
            row = {"recipe": v.recipe, "bits": v.bits, "group": v.group,
                   "kv_dtype": v.kv_dtype, "bytes": v.bytes, **m.to_json()}  # fmt: skip
            longest = max(contexts)  # the prompt in training-window chunks, as a device runs it
            row["peak_chunked_bytes"] = {str(longest): peak_memory(v.path, longest, config.context)}
            if v.kv_dtype == "int8":
                row["perplexity_stepwise"] = m.perplexity
                one_layer = 2 * 2 * model.heads * model.head_dim * 4  # K and V, past + grown
                row["transient_dequant_bytes"] = {str(c): one_layer * c for c in contexts}
            elif f"{v.recipe}+kv8" in recipes:  # the float twin, through its cache as well
                row["perplexity_stepwise"] = ort_perplexity(
                    session(v.path), corpus.test, config.context, args.eval_bytes, chunk=1
                )
            rows.append(row)
    bw = host_bandwidth()
    _print_table(rows, contexts)
    result: dict[str, Any] = {
        "corpus": corpus.describe(),
        "model": {"arch": config.arch(), "parameters": params, "train": trained.metrics},
        "config": {"steps": config.steps, "batch": config.batch, "seed": config.seed,
                   "eval_bytes": args.eval_bytes, "threads": 1, "contexts": list(contexts)},
        "host_copy_bandwidth_bytes_s": bw,
        "variants": rows,
    }  # fmt: skip
    result["selection"] = _selection(rows, trained.model, bw, config.context)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {args.out}")
    return 0


def _print_table(rows: list[dict[str, Any]], contexts: tuple[int, ...]) -> None:
    head = f"{'variant':13} {'ppl':>7} {'step ppl':>8} {'bytes':>10} {'prefill t/s':>12} "
    head += f"{'decode t/s':>11}"
    for c in contexts:
        head += f" {f'peak@{c}':>11} {f'kv@{c}':>9}"
    head += f" {'chunked':>9}"
    print(head)
    for r in rows:
        step = f"{r['perplexity_stepwise']:8.3f}" if "perplexity_stepwise" in r else f"{'':8}"
        line = (f"{r['recipe']:13} {r['perplexity']:7.3f} {step} {r['bytes']:10,} "
                f"{r['prefill_tok_s']:12,.0f} {r['decode_tok_s']:11,.0f}")  # fmt: skip
        for c in contexts:
            line += f" {r['peak_bytes'][str(c)] / MIB:9.1f}Mi {r['kv_bytes'][str(c)] / 1024:7.0f}Ki"
        line += f" {next(iter(r['peak_chunked_bytes'].values())) / MIB:7.1f}Mi"
        print(line)


def _selection(
    rows: list[dict[str, Any]], model: Any, host_bw: float, context: int
) -> dict[str, Any]:
    """Per catalog device: the variant and context limit LM selection picks, and why."""
    from edgefleet.catalog import ALIASES, CATALOG
    from edgefleet.coordinator import lm_selection as lms

    facts = lms.facts_from_benchmark(rows, model, host_bw, max_context=context)
    scaled = lms.scale_facts(facts, lms.SMOLLM2_135M, model.dim)
    float_kv = [f for f in scaled if f.kv_dtype != "int8"]  # what the devices got before kv8
    out: dict[str, Any] = {}
    for label, variants in (
        ("byte-lm", facts),
        ("smollm2-135m-shape", scaled),
        ("smollm2-135m-shape-float-kv", float_kv),
    ):
        print(f"\nselection for {label} "
              f"(max context {variants[0].max_context}, decode floor "
              f"{lms.LMPolicy().min_decode_tok_s:g} tok/s):")  # fmt: skip
        per: dict[str, Any] = {}
        for name, profile in CATALOG.items():
            if name in ALIASES:
                continue
            sel = lms.select_lm(profile, variants)
            per[name] = sel.to_json()
            print(f"  {name:16} {lms.explain_line(sel)}")
        out[label] = per
    return out


if __name__ == "__main__":
    raise SystemExit(main())
