"""Test configuration: float64 available, strict rank promotion, shared helpers."""

import os

import jax
import numpy as np
import pytest

# float64 must be switched on before any array exists; tests pick their
# dtype explicitly, so float32 paths are exercised too.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

DTYPES = (np.float32, np.float64)
# Per-dtype tolerances for comparisons against float64 NumPy oracles.
RTOL = {np.float32: 2e-5, np.float64: 1e-10}


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
  return request.param


@pytest.fixture(params=["jit", "eager"])
def mode(request):
  """Runs a test body with JAX's jit on, then with it off (pure Python ops)."""
  if request.param == "eager":
    with jax.disable_jit():
      yield request.param
  else:
    yield request.param


def shared_data_dir():
  """The shared real-data folder, or None when it is absent."""
  path = os.environ.get("UNIROUTE_DATA") or os.path.join(
      os.path.dirname(__file__), "..", "..", "shared", "data")
  return path if os.path.isdir(path) else None
