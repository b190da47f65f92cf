"""The ``torch`` runtime: eager PyTorch inference plus the hook on-device fine-tuning starts from.

Why rebuild the network rather than ship TorchScript/pickles: a bundle carries only the zoo
architecture spec (plain JSON) and safetensors weights, so the device executes no code that
came over the wire and the same bytes serve inference and training. fp16 variants run in half
precision (weights stored as fp16), fp32 ones in float.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from edgefleet.agent.runtimes.base import (
    BundleFormatError,
    MemoryUsage,
    Runtime,
    TrainingUnsupportedError,
)
from edgefleet.bundle import Bundle
from edgefleet.profiles import DeviceProfile
from edgefleet.zoo import (
    ArchitectureError,
    ArchitectureSpec,
    CheckpointMismatchError,
    LowRankLinear,
    build_model,
    load_state_dict_strict,
)

__all__ = ["TRAIN_SCOPES", "TorchRuntime", "scope_trainable"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: full: every parameter; tinytl: biases + classifier (TinyTL's memory-light update, no
#: activation gradients kept for weights); head: the classifier only.
TRAIN_SCOPES = ("full", "tinytl", "head")


class TorchRuntime(Runtime):
    """Rebuild the zoo architecture from the manifest and load the verified safetensors."""

    name = "torch"
    supports_training = True

    def __init__(self, profile: DeviceProfile, threads: int = 1) -> None:
        super().__init__(profile, threads)
        self._model: nn.Module | None = None
        self._dtype = torch.float32
        self._usage = MemoryUsage(0, 0, "not loaded")

    def _load(self, bundle: Bundle, entry: Mapping[str, Any]) -> None:
        dtype = _DTYPES.get(str(entry.get("dtype", "float32")))
        if dtype is None:
            raise BundleFormatError(f"torch weights dtype {entry.get('dtype')!r} is not supported")
        try:
            spec = ArchitectureSpec.from_json(bundle.manifest["architecture"])
            model = build_model(spec)
            state = load_safetensors(bundle.file(str(entry["file"])))
            load_state_dict_strict(model, {k: v.float() for k, v in state.items()})
        except (ArchitectureError, CheckpointMismatchError, KeyError, ValueError) as exc:
            raise BundleFormatError(f"cannot rebuild the torch model: {exc}") from exc
        torch.set_num_threads(self.threads)  # process-wide: the agent serves one model
        model = model.eval().to(dtype)
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        working = _peak_activation_bytes(model, bundle.manifest["input"]["shape"], dtype)
        self._model, self._dtype = model, dtype
        self._usage = MemoryUsage(
            weights=weights,
            working=working,
            method="parameters+buffers; largest (input+output) of any layer at batch 1",
        )

    def _infer(self, batch: npt.NDArray[Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        assert self._model is not None
        with torch.inference_mode():
            out = self._model(torch.from_numpy(batch).to(self._dtype))
        result: np.ndarray[Any, np.dtype[np.float32]] = out.float().numpy()
        return result

    def memory(self) -> MemoryUsage:
        return self._usage

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            raise BundleFormatError("torch: no variant loaded")
        return self._model

    def trainable(self, scope: str = "full") -> nn.Module:
        """A float32 copy of the loaded network with only ``scope``'s parameters trainable.

        A copy, so serving continues on the loaded variant while fine-tuning runs. ``tinytl``
        and ``head`` keep BatchNorm statistics frozen (eval mode), as TinyTL does.
        """
        if scope not in TRAIN_SCOPES:
            raise TrainingUnsupportedError(
                f"unknown fine-tuning scope {scope!r} (use {', '.join(TRAIN_SCOPES)})"
            )
        if "fp32" not in self.profile.precisions:
            raise TrainingUnsupportedError(
                f"device profile {self.profile.name!r} has no fp32 arithmetic for training"
            )
        return scope_trainable(copy.deepcopy(self.model).float(), scope)

    def unload(self) -> None:
        self._model = None
        self._usage = MemoryUsage(0, 0, "not loaded")
        super().unload()


def scope_trainable(model: nn.Module, scope: str) -> nn.Module:
    """``model`` (in place) with only ``scope``'s parameters trainable, in training mode.

    Apart from :meth:`TorchRuntime.trainable` so the federated ClientApp, which builds its
    model from the round's arrays rather than a loaded bundle, scopes it the same way.
    """
    head = _classifier(model)
    for name, param in model.named_parameters():
        if scope == "full":
            param.requires_grad_(True)
        elif scope == "tinytl":
            param.requires_grad_(name.endswith(".bias") or name.startswith(head))
        else:
            param.requires_grad_(name.startswith(head))
    model.train()
    if scope != "full":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model


def _classifier(model: nn.Module) -> str:
    """Name prefix of the last Linear (or low-rank linear) layer: the classification head."""
    last = ""
    for name, module in model.named_modules():
        inside_low_rank = bool(last) and name.startswith(last + ".")
        if isinstance(module, LowRankLinear) or (
            isinstance(module, nn.Linear) and not inside_low_rank
        ):
            last = name
    if not last:
        raise TrainingUnsupportedError("the network has no linear classification head")
    return last + "."


def _peak_activation_bytes(model: nn.Module, shape: list[int], dtype: torch.dtype) -> int:
    """Largest input+output footprint of any leaf layer on one batch-1 forward pass.

    Eager inference frees each intermediate once its consumer ran, so the live set is about
    one layer's input and output; this is the figure that grows with the network's widths.
    """
    peak = 0

    def hook(_m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal peak
        size = sum(t.numel() * t.element_size() for t in inputs if isinstance(t, torch.Tensor))
        if isinstance(output, torch.Tensor):
            size += output.numel() * output.element_size()
        peak = max(peak, size)

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            model(torch.zeros([int(d) for d in shape], dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    return peak
