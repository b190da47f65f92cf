"""Benchmark: federated LoRA adapters shipped as a delta on the LM variant a device holds.

    python -m benchmarks.lm_adapter_delta [--adapters auto|PATH.npz] [--local-steps 150]
                                          [--data-dir DIR]

The base is :mod:`benchmarks.lm`'s byte-lm (2 layers x 128, cached per data dir). The adapters
are the averaged ones of :mod:`benchmarks.lm_lora`'s last federated run (``final.npz`` and its
``progress.json``, checked against the base's sha256), or, when there is none or with
``--local-steps``, a short local LoRA fine-tune on the same devices' text (AdamW, the base
frozen). For each LM recipe (fp32, fp16, int8, int4-g32/64/128) it builds, signs and compares:

- the **base** variant (what a device holds), the **adapter variant**
  (:mod:`edgefleet.modelops.lm_adapter_variant`: the same graph plus unmerged LoRA branches)
  and the **merged** variant (adapters folded in, re-exported and re-quantized: what shipped
  before);
- bytes: each bundle's files, the signed delta from the base to the adapter variant and from
  the base to the merged variant (``edgefleet.delta``, without XOR, as the coordinator builds
  them), and the adapters' own bytes;
- held-out perplexity per byte on each device's own held-out text (onnxruntime), mean over
  devices;
- decode tokens/s (one thread, the median step of 64 greedy steps, best of 3 runs) of the
  adapter variant against the merged one: the unmerged branch's compute cost.

Saves ``benchmarks/results/lm_adapter_delta.json``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import struct
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "lm_adapter_delta.json"
RECIPES = ("fp32", "fp16", "int8", "int4-g32", "int4-g64", "int4-g128")


def _find_adapters(runs: list[Path], base_sha: str) -> tuple[Path, dict[str, Any]] | None:
    """The first federated ``final.npz`` of ``runs`` whose run (its ``progress.json``)
    succeeded on this base."""
    for final in runs:
        try:
            doc = json.loads((final.parent / "progress.json").read_text())
            arch = json.loads(doc["settings"]["arch_config"])
        except (OSError, ValueError, KeyError):
            continue
        if doc.get("state") == "succeeded" and arch.get("base_sha256") == base_sha:
            return final, arch
    return None


def _local_fine_tune(model: Any, lora: Any, text: Any, steps: int, seed: int = 0) -> Any:
    """Adapters from ``steps`` AdamW steps of 8 x 128 bytes on ``text`` (base frozen)."""
    import numpy as np
    import torch

    from edgefleet.lora import adapter_arrays, add_lora

    adapted = add_lora(copy.deepcopy(model), lora, seed=seed).train()
    opt = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=5e-3)
    rng = np.random.default_rng(seed)
    data = torch.from_numpy(text.astype(np.int64))
    for _ in range(steps):
        starts = rng.integers(0, data.numel() - 129, 8)
        rows = torch.stack([data[s : s + 129] for s in starts])
        logits, _, _ = adapted(rows[:, :-1], *adapted.empty_cache(8))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), rows[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    return adapter_arrays(adapted.eval())


def _ops(blob: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<I", blob[8:12])
    return {k: v["op"] for k, v in json.loads(blob[12 : 12 + n])["files"].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lm_adapter_delta")
    parser.add_argument("--adapters", default="auto", help="auto, or a final.npz")
    parser.add_argument("--local-steps", type=int, default=0, help="fine-tune locally instead")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--targets", default="q,v,proj,up,down")
    parser.add_argument("--eval-bytes", type=int, default=16384)
    parser.add_argument("--base-steps", type=int, default=300)
    parser.add_argument("--data-dir", type=Path, default=Path(".edgefleet/bench-lm"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from safetensors.torch import save

    torch.set_num_threads(1)

    from edgefleet.bundle import MANIFEST_NAME, SIGNATURE_NAME
    from edgefleet.datasets.text import load_text
    from edgefleet.datasets.text_shards import stdlib_package_shards
    from edgefleet.delta import build_delta
    from edgefleet.flower import model as fl_model
    from edgefleet.lora import LoRAConfig
    from edgefleet.modelops.lm_adapter_variant import build_adapter_variants
    from edgefleet.modelops.lm_bundle import register_lm_model
    from edgefleet.modelops.lm_compress import build_lm_variants
    from edgefleet.modelops.lm_lora import merge_adapters
    from edgefleet.modelops.lm_measure import decode_tok_s, ort_perplexity, session
    from edgefleet.modelops.lm_train import LMTrainConfig, train_lm
    from edgefleet.variant_store import VariantStore

    corpus = load_text("python-stdlib", args.data_dir)
    config = LMTrainConfig(dim=128, layers=2, heads=2, context=128, steps=args.base_steps)
    model = train_lm(corpus, config, args.data_dir, quiet=True).model.eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    base_sha = hashlib.sha256(save(state)).hexdigest()
    shards = stdlib_package_shards(4, max_bytes=150_000)

    runs = (
        [Path(args.adapters)]
        if args.adapters != "auto"
        else sorted((args.data_dir / "lora-run" / "fed").glob("run-*/final.npz"), reverse=True)
    )
    found = None if args.local_steps else _find_adapters(runs, base_sha)
    if found is None and args.adapters != "auto":
        adapters = fl_model.load_params(args.adapters)
        lora = LoRAConfig(args.rank, args.alpha, tuple(args.targets.split(",")))
        source: dict[str, Any] = {"kind": "file", "path": args.adapters}
    elif found is not None:
        adapters = fl_model.load_params(found[0])
        lora = LoRAConfig.from_json(found[1]["lora"])
        doc = json.loads((found[0].parent / "progress.json").read_text())
        source = {"kind": "federated (benchmarks.lm_lora)", "path": str(found[0]),
                  "rounds": doc["settings"]["num_rounds"], "base_sha256": base_sha}  # fmt: skip
    else:
        steps = args.local_steps or 150
        lora = LoRAConfig(args.rank, args.alpha, tuple(args.targets.split(",")))
        text = np.concatenate([s.train for s in shards])
        t = time.perf_counter()
        adapters = _local_fine_tune(model, lora, text, steps)
        source = {"kind": "local fine-tune", "steps": steps, "batch": 8, "lr": 5e-3,
                  "train_bytes": int(text.size), "seconds": round(time.perf_counter() - t, 1)}  # fmt: skip
    print(f"adapters: {source['kind']}, rank {lora.rank}, alpha {lora.alpha}, "
          f"targets {','.join(lora.targets)}")  # fmt: skip

    work = args.data_dir / "adapter-delta"
    stamp = str(int(time.time()))
    store = VariantStore(work / f"store-{stamp}")
    base_files = build_lm_variants(model, work / f"base-{stamp}", RECIPES)
    base_entry = register_lm_model(store, "byte-lm", model, base_files, dataset="python-stdlib")
    merged = merge_adapters(model, lora, adapters)
    merged_files = build_lm_variants(merged, work / f"merged-{stamp}", RECIPES)
    merged_entry = register_lm_model(store, "byte-lm-merged", merged, merged_files)
    t = time.perf_counter()
    ft = build_adapter_variants(store, "byte-lm", adapters, lora, "byte-lm-ft", measure=False)
    build_s = time.perf_counter() - t

    def ids(entry: Any) -> dict[str, str]:
        out = {}
        for v in [entry.base, *entry.variants]:
            out[str(store.load(v).manifest["recipe_label"])] = v
        return out

    bases, tuned, merges = ids(base_entry), ids(ft), ids(merged_entry)
    key = store.signing_key()

    def bundle_bytes(variant: str) -> int:
        b = store.load(variant)
        meta = sum((b.path / n).stat().st_size for n in (MANIFEST_NAME, SIGNATURE_NAME))
        return sum(len(x) for x in b.files.values()) + meta

    def delta(base: str, target: str) -> bytes:
        a, b = store.load(base), store.load(target)
        m, s = ((b.path / n).read_bytes() for n in (MANIFEST_NAME, SIGNATURE_NAME))
        return build_delta(base, a.files, target, m, s, b.files, key, xor=False)

    def ppl(variant: str) -> dict[str, float]:
        sess = session(store.load(variant).path / "model.onnx")
        return {s.name: ort_perplexity(sess, s.eval, 128, args.eval_bytes) for s in shards}

    def decode(variant: str) -> float:
        sess = session(store.load(variant).path / "model.onnx")
        prompt = shards[0].eval[:16].astype(np.int64)
        return max(decode_tok_s(sess, prompt, 64) for _ in range(3))

    rows = []
    head = f"{'recipe':9} {'bundle B':>10} {'delta B':>9} {'%':>6} {'merged delta B':>14} "
    print(
        head + f"{'ppl base':>8} {'adapter':>8} {'merged':>8} {'tok/s adapter':>13} {'merged':>8}"
    )
    for r in RECIPES:
        d_ad, d_mg = delta(bases[r], tuned[r]), delta(bases[r], merges[r])
        p_base, p_ad, p_mg = ppl(bases[r]), ppl(tuned[r]), ppl(merges[r])
        tok_ad, tok_mg = decode(tuned[r]), decode(merges[r])
        man = store.load(tuned[r]).manifest
        row = {
            "recipe": r,
            "adapter_bundle_bytes": bundle_bytes(tuned[r]),
            "merged_bundle_bytes": bundle_bytes(merges[r]),
            "base_bundle_bytes": bundle_bytes(bases[r]),
            "adapter_bytes": man["adapter"]["bytes"],
            "graph_bytes": len(store.load(tuned[r]).file("model.onnx")),
            "delta_bytes": len(d_ad),
            "delta_ops": _ops(d_ad),
            "merged_delta_bytes": len(d_mg),
            "merged_delta_ops": _ops(d_mg),
            "perplexity": {"base": p_base, "adapter": p_ad, "merged": p_mg},
            "mean_perplexity": {
                k: sum(v.values()) / len(v)
                for k, v in (("base", p_base), ("adapter", p_ad), ("merged", p_mg))
            },
            "decode_tok_s": {"adapter": tok_ad, "merged": tok_mg, "base": decode(bases[r])},
        }
        rows.append(row)
        mp = row["mean_perplexity"]
        print(f"{r:9} {row['adapter_bundle_bytes']:>10,} {len(d_ad):>9,} "
              f"{len(d_ad) / row['adapter_bundle_bytes']:>6.1%} {len(d_mg):>14,} "
              f"{mp['base']:>8.3f} {mp['adapter']:>8.3f} {mp['merged']:>8.3f} "
              f"{tok_ad:>13,.0f} {tok_mg:>8,.0f}")  # fmt: skip
    result = {
        "base": {"arch": config.arch(), "sha256": base_sha},
        "adapters": {
            **source,
            "lora": lora.to_json(),
            "params": int(sum(np.asarray(v).size for v in adapters.values())),
        },
        "devices": {
            s.name: {"sources": list(s.sources), "eval_bytes": int(s.eval.size)} for s in shards
        },
        "eval_bytes": args.eval_bytes,
        "build_adapter_variants_seconds": round(build_s, 3),
        "threads": 1,
        "recipes": rows,
        "perplexity_unit": "exp(mean next-byte NLL) on each device's held-out text",
        "note": "decode tok/s: median step of 64 greedy steps after a 16-byte prompt, best of 3",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"saved {args.out} (mean perplexity over {len(shards)} devices; "
          f"{math.fsum(r['delta_bytes'] for r in rows):,.0f} delta bytes in all)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
