"""Integer order keys of floats."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniroute_jax import ordering

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
