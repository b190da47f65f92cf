"""Zoo architectures build at any width and rebuild exactly from their manifest spec."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from edgefleet.modelops.data import Dataset
from edgefleet.modelops.transforms import low_rank
from edgefleet.zoo import (
    ArchitectureError,
    ArchitectureSpec,
    CheckpointMismatchError,
    architecture_of,
    build_model,
    load_checkpoint,
    load_state_dict_strict,
)


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch", ["ds-cnn", "resnet-8", "mlp"])
def test_width_multiplier_shrinks_and_forward_works(arch: str) -> None:
    wide = build_model(ArchitectureSpec.zoo(arch, width=1.0))
    narrow = build_model(ArchitectureSpec.zoo(arch, width=0.25))
    assert _params(narrow) < _params(wide) / 4
    assert wide(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    # The spec read back from the module is the spec it was built from.
    spec = ArchitectureSpec.zoo(arch, width=0.5)
    assert architecture_of(build_model(spec), spec) == spec
    assert ArchitectureSpec.from_json(spec.to_json()) == spec


def test_unknown_architecture_and_width() -> None:
    with pytest.raises(ArchitectureError, match="unknown architecture 'vgg-19'"):
        ArchitectureSpec.zoo("vgg-19")
    with pytest.raises(ArchitectureError, match="width"):
        ArchitectureSpec.zoo("mlp", width=0.0)


def test_checkpoint_must_match_architecture(tmp_path: Path) -> None:
    small = build_model(ArchitectureSpec.zoo("ds-cnn", width=0.25))
    path = tmp_path / "small.safetensors"
    save_file(small.state_dict(), str(path))
    big = build_model(ArchitectureSpec.zoo("ds-cnn", width=0.5))
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        load_state_dict_strict(big, load_checkpoint(path))
    mlp = build_model(ArchitectureSpec.zoo("mlp"))
    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_state_dict_strict(mlp, load_checkpoint(path))


def test_custom_module_by_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "user_models.py").write_text(
        "import torch\n"
        "def make(hidden: int) -> torch.nn.Module:\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden),\n"
        "                               torch.nn.ReLU(), torch.nn.Linear(hidden, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = ArchitectureSpec.custom("user_models:make", {"hidden": 16}, (1, 8, 8))
    model = build_model(spec)
    ckpt = tmp_path / "user.pt"
    torch.save(model.state_dict(), ckpt)
    again = build_model(ArchitectureSpec.from_json(spec.to_json()))
    load_state_dict_strict(again, load_checkpoint(ckpt))
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(model(x), again(x))
    with pytest.raises(ArchitectureError, match="cannot import"):
        build_model(ArchitectureSpec.custom("no_such_module_xyz:make", {}, (1, 8, 8)))
    with pytest.raises(ArchitectureError, match=r"package\.module:Factory"):
        build_model(ArchitectureSpec.custom("user_models", {}, (1, 8, 8)))
    sys.modules.pop("user_models", None)


def test_low_rank_split_is_exact_for_low_rank_weights(digits: Dataset) -> None:
    """SVD factorisation of rank-2 kernels (3x3 convs included) reproduces the network."""
    torch.manual_seed(0)
    spec = ArchitectureSpec.zoo("resnet-8", width=0.5)
    model = build_model(spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear) and getattr(m, "groups", 1) == 1:
                out_f = m.weight.shape[0]
                fan_in = m.weight[0].numel()
                w = torch.randn(out_f, 2) @ torch.randn(2, fan_in) / fan_in
                m.weight.copy_(w.reshape(m.weight.shape))
    factored, new_spec = low_rank(model, spec, digits, energy=0.999, epochs=0, seed=0)
    assert any(name.endswith("conv1") for name in new_spec.low_rank)  # a 3x3 conv was split
    assert set(new_spec.low_rank.values()) <= {1, 2}
    x = torch.from_numpy(digits.x_test[:32])
    with torch.no_grad():
        assert torch.allclose(model(x), factored(x), atol=1e-4, rtol=1e-3)
    assert sum(p.numel() for p in factored.parameters()) < sum(
        p.numel() for p in model.parameters()
    )
