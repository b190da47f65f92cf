"""``edgefleet train start LM``: federated LoRA of a registered language model from the CLI.

Fast: every refusal is one line before anything starts (no run directory, no federation); the
registered LM's base is recovered from its signed fp32 graph exactly, and a graph it cannot
read is refused in one line. Slow: a 2-device, 2-round ``--local`` run on a real SuperLink and
SuperNodes that reports held-out perplexity per round and registers ``LM-ft-RUN``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgefleet.cli import train_validate
from edgefleet.cli.train_cmds import train_app
from edgefleet.cli.train_follow import mean_perplexity, round_line
from edgefleet.lora import LORA_TARGETS
from edgefleet.variant_store import ModelEntry, VariantStore
from edgefleet.zoo import ByteLM

runner = CliRunner()
TINY = {"vocab": 256, "dim": 32, "layers": 1, "heads": 2, "mlp_ratio": 2, "context": 32}


def _plain(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


def _store_with_entries(root: Path) -> Path:
    """A data dir whose index names a byte-lm and a classifier (validation reads entries only)."""
    store = VariantStore(root)
    store.add_model(ModelEntry("lm", {"arch": "byte-lm", "config": TINY}, "text", "0" * 64))
    store.add_model(ModelEntry("digits", {"name": "mlp", "config": {}}, "digits", "1" * 64))
    return root


def _start(data_dir: Path, *args: str, local: int = 2) -> tuple[int, str]:
    res = runner.invoke(
        train_app,
        ["start", *args, "--local", str(local), "--data-dir", str(data_dir), "--rounds", "1"],
    )
    return res.exit_code, _plain(res.output)


def test_lora_targets_match_the_adapters_module() -> None:
    assert train_validate.LORA_TARGETS == LORA_TARGETS


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--strategy", "heterofl"], "--strategy heterofl does not apply to language model 'lm'"),
        (["--update-codec", "q8"], "--update-codec q8 does not apply"),
        (["--dp", "server-fixed"], "--dp server-fixed does not apply"),
        (["--secure-agg", "--min-devices", "3"], "--secure-agg does not apply"),
        (["--rebuild"], "--rebuild does not apply"),
        (["--lora-targets", "q,x"], "--lora-targets 'q,x': choose among q, k, v, proj, up, down"),
        (["--lora-targets", "q,q"], "names a target twice"),
        (["--lora-rank", "0"], "--lora-rank must be >= 1, got 0"),
        (["--lora-alpha", "nan"], "--lora-alpha must be a finite number"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
    ],
)
def test_a_language_model_refuses_what_lora_does_not_take(
    tmp_path: Path, args: list[str], says: str
) -> None:
    data_dir = _store_with_entries(tmp_path / "d")
    code, output = _start(data_dir, "lm", *args)
    assert code == 2, output
    assert says in output
    assert not (data_dir / "fl-runs").exists()  # nothing started, no run directory


def test_lora_options_on_a_classifier_are_refused(tmp_path: Path) -> None:
    data_dir = _store_with_entries(tmp_path / "d")
    code, output = _start(data_dir, "mlp", "--lora-rank", "4")
    assert code == 2 and "--lora-rank: LoRA fine-tunes a registered language model" in output
    code, output = _start(data_dir, "digits", "--lora-targets", "q", "--steps", "3")
    assert code == 1
    assert "--lora-targets, --steps: LoRA fine-tunes a registered language model" in output
    assert "'digits' is not one" in output
    code, output = _start(data_dir, "lm", local=7)
    assert code == 2 and "6 built-in text devices" in output
    assert not (data_dir / "fl-runs").exists()


def test_the_round_line_says_perplexity_for_a_lora_run() -> None:
    r = {"round": 2, "participants": ["a", "b"], "train_loss": 1.5, "seconds": 3.0,
         "device_eval_loss": {"a": 2.0, "b": 1.0}, "client_eval_acc": 0.4}  # fmt: skip
    ppl = mean_perplexity(r["device_eval_loss"])  # type: ignore[arg-type]
    assert ppl == pytest.approx((7.389056 + 2.718282) / 2, rel=1e-5)
    assert f"held-out perplexity {ppl:.3f} at the round's start" in round_line(r, 3, lora=True)
    assert "acc" not in round_line(r, 3, lora=True)
    assert "perplexity" not in round_line(r, 3)


def test_a_registered_lms_base_is_recovered_from_its_signed_graph(tmp_path: Path) -> None:
    from edgefleet.modelops.lm_bundle import lm_manifest, register_lm_model
    from edgefleet.modelops.lm_compress import LMVariantFile, build_lm_variants
    from edgefleet.modelops.lm_lora import LMBaseError, load_lm_base

    torch.manual_seed(0)
    model = ByteLM(**TINY).eval()
    with torch.no_grad():  # distinct norm scales, so a swapped norm would show
        for k, v in model.state_dict().items():
            if "norm" in k:
                v.uniform_(0.5, 1.5)
    files = build_lm_variants(model, tmp_path / "onnx", ("fp32",))
    store = VariantStore(tmp_path / "store")
    entry = register_lm_model(store, "tiny", model, files, dataset="none")
    got = load_lm_base(store, entry).state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(got[k], v), k
    graph = {"model.onnx": files[0].path.read_bytes()}
    # a base that is not the fp32 graph is refused in one line, never guessed from
    int4 = LMVariantFile("int4-g32", files[0].path, 4, 32, 4, files[0].bytes)
    q = ModelEntry("q", entry.architecture, "n", store.put(lm_manifest("q", model, int4), graph))
    with pytest.raises(LMBaseError, match="needs the fp32 graph"):
        load_lm_base(store, q)
    # a signed graph of another shape than its manifest says: refused by structure
    two = ByteLM(**{**TINY, "layers": 2})
    body = lm_manifest("o", two, files[0])
    other = ModelEntry("o", body["architecture"], "n", store.put(body, graph))
    with pytest.raises(LMBaseError, match="not a byte-lm export this version can read"):
        load_lm_base(store, other)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_start_lm_runs_federated_lora_locally_and_registers_the_result(
    tmp_path: Path,
) -> None:
    """2 built-in text devices, 2 rounds: perplexity per round, ``LM-ft-RUN`` registered."""
    from edgefleet.modelops.lm_bundle import register_lm_model
    from edgefleet.modelops.lm_compress import build_lm_variants

    torch.manual_seed(0)
    model = ByteLM(**TINY).eval()
    store = VariantStore(tmp_path / "d")
    register_lm_model(
        store, "tiny", model, build_lm_variants(model, tmp_path / "onnx", ("fp32",)), dataset="n"
    )
    res = runner.invoke(
        train_app,
        ["start", "tiny", "--local", "2", "--rounds", "2", "--steps", "8", "--lr", "0.01",
         "--name", "r1", "--data-dir", str(tmp_path / "d"), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{") :])
    assert doc["state"] == "succeeded"
    curve = doc["perplexity"]
    assert len(curve["at_round_start"]) == 2 and all(p > 1 for p in curve["at_round_start"])
    assert curve["final"] < curve["initial"]  # an untrained tiny LM learns its devices' bytes
    assert set(curve["per_device"]) == {"sim-000", "sim-001"}
    assert doc["registered"]["model"] == "tiny-ft-r1"
    assert "tiny-ft-r1" in [m.name for m in store.models()]
    assert doc["registered"]["as"] in ("adapter-variants", "merged")


def test_simulated_agents_get_text_by_source_and_keep_it_as_is(tmp_path: Path) -> None:
    """``edgefleet simulate --local-data text``: one text shard per device, which the agent's
    federation hands to its SuperNode unchanged (a classifier shard is rewritten)."""
    from edgefleet.agent.federation import _is_text_shard
    from edgefleet.datasets.core import DatasetError
    from edgefleet.datasets.text_shards import load_text_shard
    from edgefleet.devtools.sim_data import group_local_data, is_grouped_source

    assert is_grouped_source("text") and is_grouped_source("text:20000")
    grouped = group_local_data("text:20000", 2, tmp_path / "data")
    shards = [load_text_shard(p) for p in grouped.paths]
    assert [s.sources for s in shards] == [("asyncio", "concurrent"), ("email", "http", "urllib")]
    assert all(_is_text_shard(str(p)) for p in grouped.paths)
    assert not _is_text_shard(str(tmp_path / "missing.npz")) and not _is_text_shard("digits")
    with pytest.raises(DatasetError, match="1 to 6 built-in text devices"):
        group_local_data("text", 7, tmp_path / "more")
    with pytest.raises(DatasetError, match="use text or text:BYTES"):
        group_local_data("text:lots", 2, tmp_path / "bad")


def test_train_ls_and_status_read_a_lora_runs_record_in_perplexity(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "meta.json").write_text(json.dumps({"superlink": "h:1", "state": "submitted"}))
    rounds = [{"round": 1, "participants": ["a"], "train_loss": 2.0, "seconds": 1.0,
               "device_eval_loss": {"a": 2.0}}]  # fmt: skip
    doc = {"state": "succeeded", "settings": {"arch": "byte-lm-lora", "num_rounds": 1},
           "rounds": rounds, "final": {"device_eval_loss": {"a": 1.0}}}  # fmt: skip
    (run / "progress.json").write_text(json.dumps(doc))
    res = runner.invoke(train_app, ["ls", "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 0 and "ppl 2.718" in res.output, res.output
    res = runner.invoke(train_app, ["status", "r1", "--runs-dir", str(tmp_path / "runs")])
    assert "held-out perplexity 7.389 at the round's start" in res.output, res.output
    res = runner.invoke(train_app, ["status", "r1", "--runs-dir", str(tmp_path / "runs"), "--json"])
    curve = json.loads(res.output)["perplexity"]
    assert curve["initial"] == pytest.approx(7.389056) and curve["final"] == pytest.approx(2.718282)
