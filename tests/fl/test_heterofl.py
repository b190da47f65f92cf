"""HeteroFL slice/merge math, on plain arrays and on real zoo models at several widths."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.flower import heterofl
from edgefleet.flower import model as fl_model


def test_slice_takes_the_leading_block() -> None:
    g = {"w": np.arange(24, dtype=np.float32).reshape(4, 6), "b": np.arange(4, dtype=np.float32)}
    local = heterofl.slice_params(g, {"w": (2, 3), "b": (2,)})
    np.testing.assert_array_equal(local["w"], [[0, 1, 2], [6, 7, 8]])
    np.testing.assert_array_equal(local["b"], [0, 1])


def test_each_element_is_averaged_over_the_clients_holding_it() -> None:
    g = {"w": np.full((4, 4), 7.0, dtype=np.float32)}
    full = {"w": np.ones((4, 4), dtype=np.float32)}
    half = {"w": np.full((2, 2), 4.0, dtype=np.float32)}
    out = heterofl.aggregate(g, [(full, 1.0), (half, 3.0)])["w"]
    # leading 2x2 block: (1*1 + 3*4) / 4; elsewhere only the full client
    np.testing.assert_allclose(out[:2, :2], 13 / 4)
    np.testing.assert_allclose(out[2:, :], 1.0)
    np.testing.assert_allclose(out[:2, 2:], 1.0)


def test_untouched_elements_keep_the_global_value() -> None:
    g = {"w": np.arange(16, dtype=np.float32).reshape(4, 4)}
    out = heterofl.aggregate(g, [({"w": np.zeros((2, 2), np.float32)}, 5.0)])["w"]
    np.testing.assert_array_equal(out[:2, :2], 0)
    np.testing.assert_array_equal(out[2:], g["w"][2:])


def test_equal_width_reduces_to_fedavg() -> None:
    rng = np.random.default_rng(0)
    g = {"w": rng.normal(size=(3, 5)).astype(np.float32)}
    ups = [({"w": rng.normal(size=(3, 5)).astype(np.float32)}, float(n)) for n in (10, 30)]
    expected = (ups[0][0]["w"] * 10 + ups[1][0]["w"] * 30) / 40
    np.testing.assert_allclose(heterofl.aggregate(g, ups)["w"], expected, rtol=1e-6)


def test_shapes_that_do_not_nest_are_refused() -> None:
    g = {"w": np.zeros((2, 2), np.float32)}
    with pytest.raises(heterofl.HeteroFLError, match="does not fit"):
        heterofl.slice_params(g, {"w": (3, 1)})
    with pytest.raises(heterofl.HeteroFLError, match="does not fit"):
        heterofl.aggregate(g, [({"w": np.zeros((1, 3), np.float32)}, 1.0)])
    with pytest.raises(heterofl.HeteroFLError, match="names differ"):
        heterofl.slice_params(g, {"v": (1, 1)})


@pytest.mark.parametrize("arch", ["mlp", "ds-cnn"])
def test_zoo_widths_nest_and_round_trip(arch: str) -> None:
    full = fl_model.initial_params(arch, seed=1)
    for width in (0.5, 0.25):
        shapes = fl_model.shapes(arch, width)
        local = heterofl.slice_params(full, shapes)
        assert {k: v.shape for k, v in local.items()} == shapes
        # a client that sends its slice back unchanged leaves the model unchanged
        merged = heterofl.aggregate(full, [(local, 1.0)])
        for k in full:
            np.testing.assert_allclose(merged[k], full[k])
