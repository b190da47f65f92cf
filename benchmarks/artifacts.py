"""Artifact download throughput: our chunked gRPC stream vs a plain local file copy.

``python -m benchmarks.artifacts [--mb 32] [--repeat 3]`` builds one signed bundle of the given
size, starts a real coordinator process (embedded Redis) on loopback, registers a device and
measures, each as the median of ``--repeat`` runs:

- ``file copy``: ``shutil.copyfile`` of the same archive bytes on this disk (the floor: what
  moving the bytes costs with no network, framing or checks);
- ``stream only``: reading every ``ArtifactChunk`` of ``DownloadArtifact`` over loopback and
  dropping it (gRPC + protobuf cost);
- ``agent fetch``: the agent's whole path - stream to the partial file, sha256 of the archive,
  safe unpack, full bundle verification (signature + per-file sha256), rename into the cache;
- ``agent resume from 50%``: the same after a cut at half the archive: the bytes sent are the
  missing half only, which is what makes a flaky link cheap.

Why these baselines: the ratio to a file copy says what the network path costs per byte, and
the gap between "stream only" and "agent fetch" what the end-to-end verification costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from benchmarks.desired import assign_variant
from edgefleet.agent.artifacts import ArtifactCache
from edgefleet.archive import pack_directory
from edgefleet.catalog import get_profile
from edgefleet.coordinator.tokens import ENROLL_TOKEN_FILE
from edgefleet.devtools.demo import start_coordinator_process, stop_process
from edgefleet.v1 import artifact_pb2, artifact_pb2_grpc, device_pb2, device_pb2_grpc
from edgefleet.variant_store import VariantStore
from edgefleet.wire import profile_to_proto


def _median_time(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    async def timed() -> float:
        start = time.perf_counter()
        await fn()
        return time.perf_counter() - start

    return statistics.median(asyncio.run(timed()) for _ in range(repeat))


async def _register(address: str, token: str) -> device_pb2.RegisterResponse:
    async with grpc.aio.insecure_channel(address) as ch:
        reply: device_pb2.RegisterResponse = await device_pb2_grpc.DeviceServiceStub(ch).Register(
            device_pb2.RegisterRequest(
                instance_key=uuid.uuid4().hex,
                name="bench-artifacts",
                profile=profile_to_proto(get_profile("rpi5")),
            ),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
        return reply


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mb", type=float, default=32.0, help="bundle size in MiB")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    size = int(args.mb * 1024 * 1024)

    with tempfile.TemporaryDirectory(prefix="bench-artifacts-") as tmp_name:
        tmp = Path(tmp_name)
        store = VariantStore(tmp / "coord")
        variant = store.put(
            {"name": "bench", "recipe": "none"},
            {"weights.bin": os.urandom(size), "model.onnx": b"graph" * 1000},
        )
        archive = tmp / "archive.tar"
        with archive.open("wb") as out:
            info = pack_directory(store.variants_dir / variant, out)
        proc, address = start_coordinator_process(tmp / "coord")
        try:
            token = (tmp / "coord" / ENROLL_TOKEN_FILE).read_text().strip()
            device = asyncio.run(_register(address, token))
            assign_variant(tmp / "coord", [device.device_id], variant)
            metadata = (("authorization", f"Bearer {device.credential}"),)
            keys = list(device.bundle_public_keys)

            async def stream_only() -> int:
                received = 0
                async with grpc.aio.insecure_channel(address) as ch:
                    call = artifact_pb2_grpc.ArtifactServiceStub(ch).DownloadArtifact(
                        artifact_pb2.DownloadArtifactRequest(
                            device_id=device.device_id, variant_id=variant
                        ),
                        metadata=metadata,
                    )
                    async for chunk in call:
                        received += len(chunk.data)
                assert received == info.size
                return received

            async def copy() -> None:
                target = tmp / "copy.tar"
                shutil.copyfile(archive, target)
                target.unlink()

            runs = iter(range(10**6))

            async def agent_fetch(cut_at: int = 0) -> None:
                cache = ArtifactCache(tmp / f"agent-{next(runs)}", keys)
                if cut_at:  # a partial from an earlier, cut download
                    part = cache.downloads_dir / f"{variant}.part"
                    with archive.open("rb") as src, part.open("wb") as dst:
                        dst.write(src.read(cut_at))
                    cache._write_announced(variant, info.size, info.sha256)
                async with grpc.aio.insecure_channel(address) as ch:
                    stub = artifact_pb2_grpc.ArtifactServiceStub(ch)
                    result = await cache.fetch(variant, stub, metadata, device.device_id)
                assert result.bytes_received == info.size - cut_at
                shutil.rmtree(cache.root.parent)

            asyncio.run(stream_only())  # warm-up: the coordinator builds its archive once
            rows = [
                ("file copy (same bytes, local disk)", info.size, _median_time(copy, args.repeat)),
                ("stream only (loopback gRPC)", info.size, _median_time(stream_only, args.repeat)),
                (
                    "agent fetch (stream + sha256 + unpack + verify)",
                    info.size,
                    _median_time(agent_fetch, args.repeat),
                ),
                (
                    "agent resume from 50% (sends the missing half)",
                    info.size - info.size // 2,
                    _median_time(lambda: agent_fetch(info.size // 2), args.repeat),
                ),
            ]
        finally:
            stop_process(proc)

    base = rows[0][2]
    print(f"archive: {info.size / 2**20:.1f} MiB, median of {args.repeat} runs, 64 KiB chunks\n")
    print("| path | MiB moved | seconds | MiB/s | time vs file copy |")
    print("|---|---:|---:|---:|---:|")
    for name, moved, seconds in rows:
        print(
            f"| {name} | {moved / 2**20:.1f} | {seconds:.3f} | {moved / 2**20 / seconds:,.0f} "
            f"| {seconds / base:.1f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
