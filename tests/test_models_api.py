"""Models over the API (issue 18 items 1 and 3): two real replicas on one real Redis.

From a directory with no data dir, the real CLI uploads a user module, checkpoint and ``.npz``
(``models add``), then lists, shows, exports and removes over ModelService; a worker's store
(a third data dir on the same Redis) builds the variants, as an ``edgefleet worker`` would.
Replica B serves the bytes of a variant it never stored itself (export and a device's download)
and refuses a corrupted blob; every bad input is one line with the right status code.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from edgefleet.client.admin_client import AdminClient, AdminClientError
from edgefleet.client.models_client import ModelsClient
from edgefleet.coordinator.shared_store import SharedStore, open_store
from edgefleet.fleet_dir import SIGNING_KEY_FILE, init_fleet
from edgefleet.v1 import admin_pb2, artifact_pb2, artifact_pb2_grpc, models_pb2, models_pb2_grpc
from edgefleet.variant_store import ModelEntry
from tests.conftest import ADMIN_TOKEN, CoordinatorProc, cli_env, wait_for
from tests.fleetkit import ScriptedDevice, tiny_onnx, variant_manifest

USER_MODULE = '''\
"""A user's own network: 8 inputs, 3 classes."""
import torch.nn as nn


def Net(hidden: int = 4) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))
'''


def _cli(
    address: str, cwd: Path, *args: str, pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = cli_env(address)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli.main", "models", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def replicas(
    coordinator_factory: Callable[..., CoordinatorProc], tmp_path: Path, redis_url: str
) -> Iterator[tuple[CoordinatorProc, CoordinatorProc, Path]]:
    fleet = tmp_path / "fleet"
    init_fleet(fleet)
    args = ("--redis-url", redis_url, "--fleet-dir", str(fleet), "--rollout-interval", "0.2")
    a = coordinator_factory(*args, data_dir=tmp_path / "replica-a")
    b = coordinator_factory(*args, data_dir=tmp_path / "replica-b")
    yield a, b, fleet


def _worker_builds(store: SharedStore, name: str) -> tuple[str, str]:
    """What a build job does for a pending model: the real base from the uploaded module,
    checkpoint and dataset (modelops), then an int8 variant (synthetic but a real-format,
    signed bundle: compression itself is tested elsewhere)."""
    from edgefleet.modelops.build import BuildOptions
    from edgefleet.modelops.measure import LatencyConfig
    from edgefleet.modelops.register_upload import build_pending_base

    pending = store.model(name)
    assert pending.base == "" and pending.source["upload"]["dataset"]
    options = BuildOptions(latency=LatencyConfig(warmup=1, runs=3))
    base = build_pending_base(store, name, options=options).base
    assert store.model(name).source["upload"] == pending.source["upload"]  # kept for rm
    int8_body = variant_manifest(name, "int8-static", "int8", 0.89, 1000, 512, 1000, 0.05)
    int8 = store.put(int8_body, {"model.onnx": tiny_onnx(2), "model.tflite": b"TFL3" * 64})
    store.add_variant(name, int8)
    return base, int8


def test_models_over_the_api_from_a_host_without_a_data_dir(
    replicas: tuple[CoordinatorProc, CoordinatorProc, Path],
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b, fleet = replicas
    user = tmp_path / "user"
    user.mkdir()
    (user / "usernet.py").write_text(USER_MODULE)
    rng = np.random.default_rng(0)
    np.savez(user / "sensors.npz", x=rng.standard_normal((60, 8)).astype(np.float32),
             y=np.arange(60) % 3)  # fmt: skip
    import torch

    sys.path.insert(0, str(user))
    try:
        import usernet  # type: ignore[import-not-found]

        torch.save(usernet.Net().state_dict(), user / "net.pt")
    finally:
        sys.path.remove(str(user))
    empty = tmp_path / "operator"
    empty.mkdir()

    added = _cli(
        a.address, empty, "add", "sensors", "--arch", "custom", "--import-path", "usernet:Net",
        "--checkpoint", str(user / "net.pt"), "--dataset", str(user / "sensors.npz"), "--json",
        pythonpath=user,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["state"] == "pending"
    listed = _cli(b.address, empty, "ls", "--json")  # the other replica sees it
    assert [m["name"] for m in json.loads(listed.stdout)] == ["sensors"], listed.stderr

    worker = open_store(tmp_path / "worker", redis_url, signing_key_path=fleet / SIGNING_KEY_FILE)
    assert isinstance(worker, SharedStore)
    base, int8 = _worker_builds(worker, "sensors")
    assert (tmp_path / "worker" / "datasets" / "sensors.npz").is_file()  # travelled as a blob
    rebuilt = _worker_builds_again(worker, "sensors")
    with ModelsClient(a.address, ADMIN_TOKEN) as client:
        (model,) = client.list_models()
        assert list(model.variants) == [base, rebuilt]  # a rebuilt recipe replaced its row
        with pytest.raises(AdminClientError, match=r"has no model\.tflite"):
            client.export("sensors", "fp32", "tflite")

    from typer.testing import CliRunner

    from edgefleet.cli.main import app

    monkeypatch.chdir(empty)
    table = CliRunner().invoke(app, ["models", "variants", "sensors"], env=cli_env(b.address))
    assert table.exit_code == 0 and "int8-static" in table.output, table.output
    shown = _cli(b.address, empty, "show", base[:10])
    assert json.loads(shown.stdout)["id"] == base, shown.stderr
    out = tmp_path / "exported"
    exported = _cli(
        b.address, empty, "export", "sensors", "int8-static", "--format", "tflite",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    (written,) = json.loads(exported.stdout)["files"]
    assert Path(written["path"]).read_bytes() == b"TFL3" * 64

    # a device on replica B downloads the variant a rollout through replica A assigned
    device = ScriptedDevice.register(b.address, "dev-1", "rpi4")
    with AdminClient(a.address, ADMIN_TOKEN) as admin:
        rollout = admin.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="sensors", selector=f"device:{device.device_id}", strategy="all"
            )
        )
    (target,) = {d.variant_id for d in rollout.devices}
    wait_for(lambda: device.heartbeat().variant_id == target, 10, "the assignment")
    archive = _download(b.address, device, target)
    expected = redis.Redis.from_url(redis_url).get(f"{{edgefleet}}:store:variant:{target}")
    assert expected is not None and hashlib.sha256(archive).hexdigest() == expected.decode()
    _one_line_error(_cli(a.address, empty, "rm", "sensors"), "rollout", "let it finish")

    assert not (empty / ".edgefleet").exists()  # nothing ever read or wrote a data dir here
    assert not (tmp_path / "replica-b" / "variants" / int8).exists()  # B never needed it
    device.obey()
    device.heartbeat()  # now runs it
    with ModelsClient(a.address, ADMIN_TOKEN) as client:
        client.control_rollout(rollout.id, "rollback")  # no rollout deploys it any more...
        with pytest.raises(AdminClientError, match=r"in use: device dev-1 runs"):
            client.remove_model("sensors")  # ...but a device still runs it
    _bad_inputs_and_corrupt_blobs_are_one_line_each(a, b, fleet, tmp_path, redis_url)


def _worker_builds_again(store: SharedStore, name: str) -> str:
    body = variant_manifest(name, "int8-static", "int8", 0.891, 1000, 512, 1000, 0.05)
    again = store.put(body, {"model.onnx": tiny_onnx(3), "model.tflite": b"TFL3" * 64})
    store.add_variant(name, again)
    return again


def _download(address: str, device: ScriptedDevice, variant_id: str) -> bytes:
    with grpc.insecure_channel(address) as ch:
        chunks = artifact_pb2_grpc.ArtifactServiceStub(ch).DownloadArtifact(
            artifact_pb2.DownloadArtifactRequest(device_id=device.device_id, variant_id=variant_id),
            metadata=(("authorization", f"Bearer {device.credential}"),),
            timeout=10,
        )
        return b"".join(c.data for c in chunks)


def _stub(address: str) -> tuple[grpc.Channel, models_pb2_grpc.ModelServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, models_pb2_grpc.ModelServiceStub(channel)


META = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


def _upload(
    stub: models_pb2_grpc.ModelServiceStub,
    header: models_pb2.ModelUploadHeader,
    chunks: list[tuple[int, bytes]],
) -> grpc.RpcError:
    requests = [models_pb2.AddModelRequest(header=header)] + [
        models_pb2.AddModelRequest(chunk=models_pb2.FileChunk(kind=k, data=d)) for k, d in chunks
    ]  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as info:
        stub.AddModel(iter(requests), metadata=META, timeout=10)
    return info.value  # type: ignore[return-value]


def _file(kind: int, name: str, data: bytes, sha: str = "") -> models_pb2.UploadedFile:
    return models_pb2.UploadedFile(
        kind=kind,  # type: ignore[arg-type]
        file_name=name,
        size=len(data),
        sha256=sha or hashlib.sha256(data).hexdigest(),
    )


def _bad_inputs_and_corrupt_blobs_are_one_line_each(
    a: CoordinatorProc, b: CoordinatorProc, fleet: Path, tmp_path: Path, redis_url: str
) -> None:
    """Every bad upload field, unknown name and malformed id is one line with its code; a
    corrupted blob is refused by the replica reading it (run on the first test's replicas:
    two coordinator starts less)."""
    source = b"def Net():\n    return None\n"
    module = models_pb2.UPLOAD_KIND_MODULE_SOURCE
    ckpt = models_pb2.UPLOAD_KIND_CHECKPOINT
    dataset = models_pb2.UPLOAD_KIND_DATASET

    def custom(name: str, *files: models_pb2.UploadedFile) -> models_pb2.ModelUploadHeader:
        return models_pb2.ModelUploadHeader(
            name=name,
            architecture="custom",
            import_path="net:Net",
            files=list(files),
            dataset_name="" if any(f.kind == dataset for f in files) else "digits",
        )

    ck = b"PK\x03\x04" + b"0" * 60
    bad_npz = b"not a zip"
    cases: list[tuple[models_pb2.ModelUploadHeader, list[tuple[int, bytes]], str, str]] = [
        (custom("../x"), [], "INVALID_ARGUMENT", "name"),
        (
            custom("m", _file(module, "net.py", source, "0" * 64), _file(ckpt, "n.pt", ck)),
            [(module, source), (ckpt, ck)],
            "INVALID_ARGUMENT",
            "sha256",
        ),
        (
            custom("m", _file(module, "net.py", b"def (:\n"), _file(ckpt, "n.pt", ck)),
            [(module, b"def (:\n"), (ckpt, ck)],
            "INVALID_ARGUMENT",
            "line 1",
        ),
        (
            custom(
                "m",
                _file(module, "net.py", source),
                _file(ckpt, "n.pt", ck),
                _file(dataset, "d.npz", bad_npz),
            ),
            [(module, source), (ckpt, ck), (dataset, bad_npz)],
            "INVALID_ARGUMENT",
            "d.npz",
        ),
        (
            custom("m", _file(module, "net.py", source), _file(ckpt, "n.pt", ck)),
            [(ckpt, ck), (module, source)],
            "INVALID_ARGUMENT",
            "declared order",
        ),
        (
            custom("m", _file(models_pb2.UPLOAD_KIND_EXPORTED_PROGRAM, "m.pt2", ck)),
            [],
            "FAILED_PRECONDITION",
            "exported programs (.pt2) cannot be built: upload the module source",
        ),
        (
            custom("m", _file(module, "../net.py", source)),
            [],
            "INVALID_ARGUMENT",
            "file_name",
        ),
    ]
    channel, stub = _stub(a.address)
    with channel:
        for header, chunks, code, needle in cases:
            err = _upload(stub, header, chunks)
            assert err.code().name == code, (header.name, err.details())
            assert needle in err.details() and "\n" not in err.details(), err.details()
        for call, request, code, needle in [
            (stub.GetModel, models_pb2.GetModelRequest(name="nope"), "NOT_FOUND", "nope"),
            (stub.GetVariant, models_pb2.GetVariantRequest(variant="xyz"), "INVALID_ARGUMENT", "hex"),
            (stub.RemoveModel, models_pb2.RemoveModelRequest(name="nope"), "NOT_FOUND", "nope"),
        ]:  # fmt: skip
            with pytest.raises(grpc.RpcError) as info:
                call(request, metadata=META, timeout=10)
            assert info.value.code().name == code and needle in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.ListModels(models_pb2.ListModelsRequest(), timeout=10)  # no token
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # a variant stored through replica A's Redis, its archive blob corrupted before B reads it
    worker = open_store(tmp_path / "worker", redis_url, signing_key_path=fleet / SIGNING_KEY_FILE)
    body = variant_manifest("m", "fp32", "fp32", 0.9, 100, 64, 10, 0.1)
    body["tag"] = "corrupted"  # another bundle than any variant B has seen
    vid = worker.put(body, {"model.onnx": tiny_onnx(4)})
    worker.add_model(ModelEntry("m", {"name": "synthetic"}, "digits", vid, [vid]))
    client = redis.Redis.from_url(redis_url)
    archive = client.get(f"{{edgefleet}}:store:variant:{vid}")
    assert archive is not None
    client.hset(f"{{edgefleet}}:store:blob:{archive.decode()}", "0", b"x" * 512)
    channel, stub = _stub(b.address)
    with channel, pytest.raises(grpc.RpcError) as info:
        list(
            stub.ExportVariant(
                models_pb2.ExportVariantRequest(
                    model="m", variant="fp32", format=models_pb2.EXPORT_FORMAT_BUNDLE
                ),
                metadata=META,
                timeout=10,
            )
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "corrupt" in info.value.details()
    assert not (tmp_path / "replica-b" / "variants" / vid).exists()  # nothing half-kept
    with ModelsClient(a.address, ADMIN_TOKEN) as models:
        assert models.remove_model("m") == [vid]
        assert [m.name for m in models.list_models()] == ["sensors"]
    assert client.exists(f"{{edgefleet}}:store:blob:{archive.decode()}") == 0


def test_local_mode_rm_and_bundle_export_without_a_coordinator(tmp_path: Path) -> None:
    """The quick start's local mode (no coordinator): ``rm`` and ``export --format bundle``
    on the data dir; an unknown model is one line."""
    from typer.testing import CliRunner

    from edgefleet.archive import unpack_archive
    from edgefleet.cli.main import app
    from tests.fleetkit import make_model

    data = tmp_path / "data"
    ids = make_model(data, "digits")
    runner = CliRunner()
    env = {"EDGEFLEET_COORDINATOR": "", "EDGEFLEET_CONFIG": str(tmp_path / "none.toml")}
    res = runner.invoke(
        app,
        ["models", "export", "digits", "int8-static", "--format", "bundle",
         "--out", str(tmp_path / "out"), "--data-dir", str(data)],
        env=env,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    (tmp_path / "unpacked").mkdir()
    unpack_archive(tmp_path / "out" / "digits_int8_static.tar", tmp_path / "unpacked")
    assert (tmp_path / "unpacked" / "model.onnx").read_bytes() == (
        data / "variants" / ids["int8-static"] / "model.onnx"
    ).read_bytes()
    res = runner.invoke(app, ["models", "rm", "digits", "--data-dir", str(data)], env=env)
    assert res.exit_code == 0 and "3 variant(s)" in res.output, res.output
    assert not (data / "variants" / ids["fp32"]).exists()
    res = runner.invoke(app, ["models", "rm", "digits", "--data-dir", str(data)], env=env)
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == ["error: unknown model 'digits'"]
