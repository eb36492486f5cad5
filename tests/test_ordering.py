"""Integer order keys of floats, and the two ways a deferral curve orders
its switches (integer keys on a CPU, a float argsort elsewhere)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniroute_jax import metrics, ordering

# Subnormals aside: XLA:CPU flushes them to zero before comparing.
FLOATS = {np.float32: st.floats(width=32, allow_nan=False, allow_subnormal=False),
          np.float64: st.floats(allow_nan=False, allow_subnormal=False)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_order_keys_sort_like_the_floats_and_invert(dtype, data):
  drawn = data.draw(st.lists(FLOATS[dtype], min_size=1, max_size=40))
  values = np.asarray(drawn + [0.0, -0.0, np.inf, -np.inf], dtype)
  keys = np.asarray(jax.jit(ordering.order_keys)(values))
  assert keys.dtype == {np.float32: np.uint32, np.float64: np.uint64}[dtype]
  # Same order as the floats, with -0.0 and +0.0 one key.
  a, b = values[:, None], values[None, :]
  np.testing.assert_array_equal(keys[:, None] < keys[None, :], a < b)
  np.testing.assert_array_equal(keys[:, None] == keys[None, :], a == b)
  back = np.asarray(ordering.from_order_keys(jnp.asarray(keys), dtype))
  np.testing.assert_array_equal(back, np.where(values == 0, 0.0, values))
  assert not np.any(np.signbit(back[values == 0]))


def test_group_bounds_are_the_first_and_last_equal_positions():
  keys = jnp.asarray([5, 1, 5, 3, 1, 5], jnp.uint32)
  ascending = jnp.sort(keys)          # 1 1 3 5 5 5
  first, last = ordering.group_bounds(keys, ascending)
  np.testing.assert_array_equal(first, [3, 0, 3, 2, 0, 3])
  np.testing.assert_array_equal(last, [5, 1, 5, 2, 1, 5])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ties", [False, True])
def test_both_switch_orders_give_the_same_valid_points(dtype, ties):
  """Booking each switch at the end of its lambda's group (integer keys)
  and sorting the switches by lambda (argsort) agree on every valid point,
  the last of each lambda, and on which points are valid; under jit."""
  rng = np.random.default_rng(3)
  lambdas = rng.random(300)
  if ties:
    lambdas = np.round(lambdas * 8) / 8          # a few lambdas, many ties
    lambdas[:3] = -0.0
  lambdas[rng.random(300) < 0.2] = np.inf       # no switch
  lambdas = lambdas.astype(dtype)
  steps = rng.normal(size=(300, 2)).astype(dtype)
  booked = jax.jit(metrics._switches_booked_at_group_ends)(lambdas, steps)
  sorted_ = jax.jit(metrics._switches_in_sorted_order)(lambdas, steps)
  np.testing.assert_array_equal(booked[0], sorted_[0])
  np.testing.assert_array_equal(booked[2], sorted_[2])
  last = np.asarray(booked[2])
  np.testing.assert_allclose(np.asarray(booked[1])[last],
                             np.asarray(sorted_[1])[last],
                             rtol={np.float32: 1e-5, np.float64: 1e-12}[dtype],
                             atol={np.float32: 1e-5, np.float64: 1e-12}[dtype])
  # The running sum at the end of each group is the sum of every switch up
  # to that lambda (a NumPy oracle).
  ascending = np.sort(np.where(lambdas == 0, 0, lambdas))
  for p in np.flatnonzero(last):
    want = steps[lambdas <= ascending[p]].astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(np.asarray(booked[1])[p], want,
                               rtol={np.float32: 1e-4, np.float64: 1e-10}[dtype],
                               atol={np.float32: 1e-4, np.float64: 1e-10}[dtype])
