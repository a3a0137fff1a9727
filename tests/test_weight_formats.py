"""benchmarks/weight_formats.py: each format's product is x @ W, within its format's rounding."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import weight_formats  # noqa: E402


def test_every_format_multiplies_by_the_weights_it_was_given():
    w = tf.random.stateless_normal([64, 48], (1, 2)) * 0.05
    x = tf.random.stateless_normal([3, 64], (3, 4))
    exact = (x @ w).numpy()
    scale = np.abs(exact).max()
    products = weight_formats.formats(w)
    assert set(products) == {"float32", "bfloat16", "int8"}
    np.testing.assert_allclose(products["float32"](x).numpy(), exact, rtol=1e-5, atol=1e-6)
    for kind, tolerance in (("bfloat16", 0.02), ("int8", 0.08)):
        got = products[kind](x).numpy()
        assert got.dtype == np.float32 and got.shape == exact.shape
        assert np.abs(got - exact).max() < tolerance * scale, kind
        # and not merely small: another matrix's product is far off
        assert np.abs(got - (x @ tf.reverse(w, [1])).numpy()).max() > 0.3 * scale, kind
    # the timed loop runs the int8 product (its quint8 weights cross the loop boundary)
    assert weight_formats.time_product(products["int8"], x, repeats=1) > 0
