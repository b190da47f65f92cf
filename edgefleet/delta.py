"""Signed bundle deltas: ship a fine-tuned variant as the bytes that differ from one the device holds.

Why: a federated or on-device fine-tune (``MODEL-ft-RUN``) keeps the architecture and file
layout of its base and changes a few tensors (a head, the biases). Sending the whole bundle
again wastes a constrained link; sending only what changed, tensor by tensor, is enough for a
device that already holds the base.

Why it stays safe: the delta is only a recipe for rebuilding the target's *files*. It carries
the target's canonical manifest and signature verbatim, so after applying it the agent
verifies the rebuilt directory with :func:`edgefleet.bundle.load_bundle` exactly as a full
download (expected variant id, trusted signature, every file's size and sha256). The delta
itself is also signed by the fleet key (checked before anything is decompressed), and any
mismatch at any stage sends the agent back to the full archive.

Wire format (one byte string, so it streams and hashes like an archive)::

    b"EFDELTA1" | u32 little-endian header length | canonical JSON header | payload

The header names ``base``/``target`` variant ids, the target's ``manifest`` and
``bundle_signature`` (raw, as text), ``payload_sha256``, and per target file one op:

- ``same``: the bytes of base file ``from`` (same sha256; no payload);
- ``file``: the whole file, ``codec``-encoded at ``offset``/``length`` in the payload;
- ``xor``: same size as base file ``from``; payload is ``codec(base XOR target)``;
- ``tensors`` (safetensors only, whose tensors are separable byte ranges named in its JSON
  header): the base file with the listed tensors replaced, each ``codec``-encoded
  (``raw``/``zlib`` of the new tensor bytes, or ``xor-zlib``). ONNX and TFLite files keep
  their tensors inside protobuf/flatbuffer structures, so they go per file (``xor``/``file``).

``signature`` is ed25519 over the canonical header without that field. Standard library and
``cryptography`` only: the agent imports this module.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.bundle import canonical_json, public_key_hex

__all__ = ["DeltaError", "DeltaPlan", "apply_delta", "build_delta", "read_header"]

MAGIC = b"EFDELTA1"
FORMAT = "edgefleet-delta"
VERSION = 1
MAX_HEADER_BYTES = 8 * 1024 * 1024
_CODECS = ("raw", "zlib", "xor-zlib")


class DeltaError(ValueError):
    """The delta is malformed, unsigned, or does not fit the base: use the full bundle."""


@dataclass(frozen=True)
class DeltaPlan:
    """What a delta rebuilds: the target's files, raw manifest and raw signature."""

    base: str
    target: str
    manifest: bytes
    signature: bytes
    files: dict[str, bytes]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _safetensors_layout(data: bytes) -> tuple[bytes, dict[str, tuple[int, int]]] | None:
    """(header bytes, {tensor: absolute byte range}) of a safetensors file, None if not one."""
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > MAX_HEADER_BYTES:
        return None
    try:
        header = json.loads(data[8 : 8 + n])
        ranges = {
            name: (8 + n + int(v["data_offsets"][0]), 8 + n + int(v["data_offsets"][1]))
            for name, v in header.items()
            if name != "__metadata__"
        }
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    if any(not 8 + n <= s <= e <= len(data) for s, e in ranges.values()):
        return None
    return data[: 8 + n], ranges


def _encode(new: bytes, old: bytes | None, xor: bool) -> tuple[str, bytes]:
    """The smallest encoding of ``new`` (given ``old`` of the same size when XOR is allowed)."""
    options = [("raw", new), ("zlib", zlib.compress(new, 9))]
    if xor and old is not None and len(old) == len(new):
        options.append(("xor-zlib", zlib.compress(_xor(old, new), 9)))
    return min(options, key=lambda o: len(o[1]))


def _decode(codec: str, blob: bytes, size: int, old: bytes | None) -> bytes:
    if codec == "raw":
        out = blob
    elif codec in ("zlib", "xor-zlib"):
        d = zlib.decompressobj()
        try:
            out = d.decompress(blob, size + 1)  # never inflate past what the manifest allows
        except zlib.error as exc:
            raise DeltaError(f"corrupt compressed block: {exc}") from None
        if codec == "xor-zlib":
            if old is None or len(old) != len(out):
                raise DeltaError("xor block does not fit its base")
            out = _xor(old, out)
    else:
        raise DeltaError(f"unknown codec {codec!r}")
    if len(out) != size:
        raise DeltaError(f"block decodes to {len(out)} bytes, expected {size}")
    return out


class _Payload:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, codec_blob: tuple[str, bytes]) -> dict[str, Any]:
        codec, blob = codec_blob
        ref = {"codec": codec, "offset": self.size, "length": len(blob)}
        self.parts.append(blob)
        self.size += len(blob)
        return ref


def _file_op(
    name: str,
    new: bytes,
    base: Mapping[str, bytes],
    by_hash: Mapping[str, str],
    pay: _Payload,
    xor: bool,
) -> dict[str, Any]:
    same = by_hash.get(_sha(new))
    if same is not None:
        return {"op": "same", "from": same}
    old = base.get(name)
    if old is not None and name.endswith(".safetensors"):
        lo, ln = _safetensors_layout(old), _safetensors_layout(new)
        if lo is not None and ln is not None and lo[0] == ln[0] and len(old) == len(new):
            tensors = {}
            for t, (s, e) in sorted(ln[1].items()):
                if old[s:e] != new[s:e]:
                    tensors[t] = {"start": s, "end": e, **pay.add(_encode(new[s:e], old[s:e], xor))}
            return {"op": "tensors", "from": name, "tensors": tensors}
    candidates: list[tuple[dict[str, Any], list[tuple[str, bytes]]]] = [
        ({"op": "file"}, [_encode(new, None, False)])
    ]
    if xor and old is not None and len(old) == len(new):
        candidates.append(
            ({"op": "xor", "from": name}, [("xor-zlib", zlib.compress(_xor(old, new), 9))])
        )
    if old is not None:
        program, literals = _copy_program(old, new)
        candidates.append(
            (
                {"op": "blocks", "from": name},
                [("zlib", zlib.compress(program, 9)), ("zlib", zlib.compress(literals, 9))],
            )
        )
    op, blocks = min(candidates, key=lambda c: sum(len(b) for _, b in c[1]))
    if op["op"] == "blocks":
        return {**op, "program": pay.add(blocks[0]), "literals": pay.add(blocks[1])}
    return {**op, **pay.add(blocks[0])}


_BLOCK = 32  # bytes: small enough to catch a shifted float tensor, large enough to be unique
_STEP = struct.Struct("<QQQ")  # (literal bytes, base offset, copied bytes)


def _copy_program(old: bytes, new: bytes) -> tuple[bytes, bytes]:
    """rsync-like: ``new`` as literals and copies of ``old`` ranges (any alignment in ``new``).

    For files whose tensors sit inside a container that shifts when one changes size (ONNX
    protobuf after a re-export, TFLite flatbuffers): without parsing the format, unchanged
    tensors are found again wherever they moved.
    """
    index: dict[bytes, int] = {}
    for off in range(0, len(old) - _BLOCK + 1, _BLOCK):
        index.setdefault(old[off : off + _BLOCK], off)
    steps, literals = [], bytearray()
    i = lit_start = 0
    n = len(new)
    while i + _BLOCK <= n:
        at = index.get(new[i : i + _BLOCK])
        if at is None:
            i += 1
            continue
        length = _BLOCK
        while i + length < n and at + length < len(old) and new[i + length] == old[at + length]:
            length += 1
        literals += new[lit_start:i]
        steps.append(_STEP.pack(i - lit_start, at, length))
        i += length
        lit_start = i
    literals += new[lit_start:]
    steps.append(_STEP.pack(n - lit_start, 0, 0))
    return b"".join(steps), bytes(literals)


def _run_program(old: bytes, program: bytes, literals: bytes, size: int) -> bytes:
    if len(program) % _STEP.size:
        raise DeltaError("copy program is not a whole number of steps")
    out, lit = bytearray(), 0
    for lit_len, at, length in _STEP.iter_unpack(program):
        if (
            lit + lit_len > len(literals)
            or at + length > len(old)
            or len(out) + lit_len + length > size
        ):
            raise DeltaError("copy program step outside its inputs")
        out += literals[lit : lit + lit_len]
        out += old[at : at + length]
        lit += lit_len
    if len(out) != size or lit != len(literals):
        raise DeltaError(f"copy program rebuilds {len(out)} bytes, expected {size}")
    return bytes(out)


def build_delta(
    base_id: str,
    base_files: Mapping[str, bytes],
    target_id: str,
    target_manifest: bytes,
    target_signature: bytes,
    target_files: Mapping[str, bytes],
    key: Ed25519PrivateKey,
    *,
    xor: bool = True,
) -> bytes:
    """The signed delta that rebuilds the target's files from the base's (both verified).

    ``xor=False`` never mixes base bytes into the payload (changed tensors are sent as their
    new values only): the delta then reveals nothing about the base to whoever receives it.
    """
    by_hash = {_sha(data): name for name, data in sorted(base_files.items())}
    pay = _Payload()
    ops = {
        name: _file_op(name, target_files[name], base_files, by_hash, pay, xor)
        for name in sorted(target_files)
    }
    payload = b"".join(pay.parts)
    header: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "base": base_id,
        "target": target_id,
        "manifest": target_manifest.decode("utf-8"),
        "bundle_signature": target_signature.decode("utf-8"),
        "payload_sha256": _sha(payload),
        "files": ops,
        "signer": public_key_hex(key.public_key()),
    }
    header["signature"] = key.sign(canonical_json(header)).hex()
    raw = canonical_json(header)
    return MAGIC + struct.pack("<I", len(raw)) + raw + payload


def read_header(blob: bytes, trusted: Iterable[Ed25519PublicKey]) -> tuple[dict[str, Any], bytes]:
    """The delta's verified header and payload; DeltaError if malformed or badly signed."""
    if len(blob) < 12 or blob[:8] != MAGIC:
        raise DeltaError("not an edgefleet delta (bad magic)")
    (n,) = struct.unpack("<I", blob[8:12])
    if n > MAX_HEADER_BYTES or 12 + n > len(blob):
        raise DeltaError("delta header length out of range")
    try:
        header = json.loads(blob[12 : 12 + n])
        signature = bytes.fromhex(header.pop("signature"))
        signer = str(header["signer"])
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DeltaError(f"malformed delta header: {exc}") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise DeltaError(f"unsupported delta format {header.get('format')!r}")
    key = {public_key_hex(k): k for k in trusted}.get(signer)
    if key is None:
        raise DeltaError(f"delta signed by untrusted key {signer[:16]}...")
    try:
        key.verify(signature, canonical_json(header))
    except InvalidSignature:
        raise DeltaError("delta signature does not verify") from None
    payload = blob[12 + n :]
    if _sha(payload) != header.get("payload_sha256"):
        raise DeltaError("delta payload sha256 does not match its signed header")
    return header, payload


def apply_delta(
    blob: bytes, base_id: str, base_files: Mapping[str, bytes], trusted: Iterable[Ed25519PublicKey]
) -> DeltaPlan:
    """Rebuild the target's files from the base's. The caller MUST still verify the result
    as a bundle (``load_bundle`` with the target id): this checks only the delta's own
    signature, that it fits the base, and each file's size against the target manifest."""
    header, payload = read_header(blob, trusted)
    if header.get("base") != base_id:
        raise DeltaError(f"delta is against {str(header.get('base'))[:12]}, not {base_id[:12]}")
    try:
        manifest_raw = str(header["manifest"]).encode("utf-8")
        sizes = {k: int(v["bytes"]) for k, v in json.loads(manifest_raw)["files"].items()}
        ops: dict[str, dict[str, Any]] = header["files"]
        files = {name: _apply_op(ops[name], sizes[name], base_files, payload) for name in sizes}
        if set(ops) != set(sizes):
            raise DeltaError("delta ops do not match the target manifest's files")
        return DeltaPlan(
            base_id,
            str(header["target"]),
            manifest_raw,
            str(header["bundle_signature"]).encode("utf-8"),
            files,
        )
    except DeltaError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DeltaError(f"malformed delta: {exc!r}") from None


def _decode_bounded(blob: bytes, limit: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(blob, limit + 1)
    except zlib.error as exc:
        raise DeltaError(f"corrupt compressed block: {exc}") from None
    if len(out) > limit or not d.eof:
        raise DeltaError("compressed block inflates past its limit")
    return out


def _block(ref: Mapping[str, Any], payload: bytes) -> bytes:
    start, length = int(ref["offset"]), int(ref["length"])
    if start < 0 or length < 0 or start + length > len(payload):
        raise DeltaError("delta block outside the payload")
    return payload[start : start + length]


def _apply_op(op: Mapping[str, Any], size: int, base: Mapping[str, bytes], payload: bytes) -> bytes:
    kind = op["op"]
    if kind == "file":
        return _decode(str(op["codec"]), _block(op, payload), size, None)
    old = base.get(str(op["from"]))
    if old is None:
        raise DeltaError(f"delta needs base file {op['from']!r}, which the base lacks")
    if kind == "same":
        return old
    if kind == "xor":
        return _decode("xor-zlib", _block(op, payload), size, old)
    if kind == "blocks":
        limit = 24 * size + _STEP.size  # a step is 24 bytes and covers >= 1 byte
        program = _decode_bounded(_block(op["program"], payload), limit)
        literals = _decode_bounded(_block(op["literals"], payload), size)
        return _run_program(old, program, literals, size)
    if kind == "tensors":
        if len(old) != size:
            raise DeltaError("tensor delta does not fit its base file")
        out = bytearray(old)
        for ref in op["tensors"].values():
            s, e = int(ref["start"]), int(ref["end"])
            if not 0 <= s <= e <= size:
                raise DeltaError("tensor range outside the file")
            out[s:e] = _decode(str(ref["codec"]), _block(ref, payload), e - s, old[s:e])
        return bytes(out)
    raise DeltaError(f"unknown delta op {kind!r}")
