"""Delta deployment: bytes on the wire, full bundle vs delta, for DS-CNN fine-tunes.

``python -m benchmarks.delta [--json]`` builds MLPerf Tiny's KWS DS-CNN (``edgefleet.zoo``,
width 1.0, 12 classes, 49x10 MFCC input), writes its bundles as the coordinator's build does
per runtime (``weights.safetensors`` for torch fp32 and fp16, ``model.onnx`` for onnxruntime;
signed, with manifests), and for each fine-tune kind

- ``head``: only the classifier (``classifier.weight``/``.bias``) changed, as a federated
  head-only fine-tune leaves it;
- ``bias``: every bias changed (the classifier's and the BatchNorm shifts), the
  ``--finetune sparse`` shape without its pointwise convs;
- ``all``: every parameter changed (a full fine-tune: the worst case, for contrast),

reports the full archive (what a device without the base downloads) against the signed delta
``edgefleet.delta`` builds (what the coordinator streams to a device holding the base), with
XOR codecs allowed and without (``--no-xor`` is the base-oblivious variant: changed tensors
sent as new values only), and the time to build and to apply+verify it. The ONNX graph is
exported through the real exporter, so BatchNorm folding spreads a bias change into the conv
biases there: that file goes per file (xor + zlib), not per tensor.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import save

from edgefleet.archive import pack_directory
from edgefleet.bundle import MANIFEST_NAME, SIGNATURE_NAME, load_bundle, write_bundle
from edgefleet.delta import apply_delta, build_delta
from edgefleet.modelops.onnx_export import export_onnx
from edgefleet.zoo import DSCNN

KINDS = ("head", "bias", "all")


def _model() -> DSCNN:
    torch.manual_seed(0)
    model = DSCNN(**DSCNN.kws_config(1.0, 12, 1))
    model.eval()
    return model


def _tune(model: DSCNN, kind: str) -> DSCNN:
    tuned = _model()
    tuned.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            hit = (
                kind == "all"
                or (kind == "head" and name.startswith("classifier."))
                or (kind == "bias" and name.endswith(".bias"))
            )
            if hit:
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return tuned


def _files(model: DSCNN, runtime: str) -> dict[str, bytes]:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if runtime == "torch-fp32":
        return {"weights.safetensors": save({k: v.float() for k, v in state.items()})}
    if runtime == "torch-fp16":
        return {
            "weights.safetensors": save(
                {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
            )
        }
    onnx = export_onnx(model, (1, 49, 10)).SerializeToString()
    return {"model.onnx": onnx}


def _bundle(root: Path, name: str, files: dict[str, bytes], key: Ed25519PrivateKey) -> Path:
    path = root / name
    write_bundle(path, {"model": "kws", "name": name}, files, key)
    return path


def _archive_bytes(path: Path) -> int:
    buf = io.BytesIO()
    return pack_directory(path, buf).size


def measure(runtime: str, kind: str, root: Path, key: Ed25519PrivateKey) -> dict[str, Any]:
    base_model = _model()
    a = root / f"{runtime}-base"
    if not a.is_dir():
        _bundle(root, a.name, _files(base_model, runtime), key)
    b = _bundle(root, f"{runtime}-{kind}", _files(_tune(base_model, kind), runtime), key)
    trusted = [key.public_key()]
    ba, bb = load_bundle(a, trusted), load_bundle(b, trusted)
    out: dict[str, Any] = {
        "runtime": runtime,
        "kind": kind,
        "full_bytes": _archive_bytes(b),
    }
    for xor in (True, False):
        t0 = time.perf_counter()
        blob = build_delta(
            ba.variant_id,
            ba.files,
            bb.variant_id,
            (b / MANIFEST_NAME).read_bytes(),
            (b / SIGNATURE_NAME).read_bytes(),
            bb.files,
            key,
            xor=xor,
        )
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        plan = apply_delta(blob, ba.variant_id, ba.files, trusted)
        rebuilt = root / f"{runtime}-{kind}-rebuilt-{xor}"
        rebuilt.mkdir()
        for name, data in plan.files.items():
            (rebuilt / name).write_bytes(data)
        (rebuilt / MANIFEST_NAME).write_bytes(plan.manifest)
        (rebuilt / SIGNATURE_NAME).write_bytes(plan.signature)
        load_bundle(rebuilt, trusted, bb.variant_id)  # exactly as the agent verifies
        applied = time.perf_counter() - t0
        tag = "xor" if xor else "noxor"
        out[f"delta_{tag}_bytes"] = len(blob)
        out[f"build_{tag}_ms"] = round(built * 1000, 1)
        out[f"apply_verify_{tag}_ms"] = round(applied * 1000, 1)
    # What the coordinator ships: deltas without XOR (coordinator.delta_serving).
    out["saved_pct"] = round(100 * (1 - out["delta_noxor_bytes"] / out["full_bytes"]), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    args = parser.parse_args(argv)
    key = Ed25519PrivateKey.generate()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in ("torch-fp32", "torch-fp16", "onnx-fp32"):
            for kind in KINDS:
                rows.append(measure(runtime, kind, Path(tmp), key))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'runtime':<11} {'fine-tune':<9} {'full B':>9} {'delta B':>9} {'no-xor B':>9} "
        f"{'saved':>6} {'build ms':>8} {'apply+verify ms':>15}"
    )
    for r in rows:
        print(
            f"{r['runtime']:<11} {r['kind']:<9} {r['full_bytes']:>9} {r['delta_xor_bytes']:>9} "
            f"{r['delta_noxor_bytes']:>9} {r['saved_pct']:>5}% {r['build_xor_ms']:>8} "
            f"{r['apply_verify_xor_ms']:>15}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
