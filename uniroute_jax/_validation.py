"""Argument checks shared by the public functions.

Shapes are static, so they are checked on every call, traced or not. Values
are checked only when the argument is concrete: inside a user's ``jax.jit`` the
values are unknown at trace time, and a check would force a host sync.
Every error names the argument and says what was expected.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def compute_dtype(*arrays) -> jnp.dtype:
  """Floating dtype to compute in: the inputs' promoted float, at least 32-bit.

  Integer and boolean inputs (0/1 labels) compute in JAX's default float;
  float16 and bfloat16 inputs accumulate in float32.
  """
  dtypes = [jnp.asarray(a).dtype for a in arrays if a is not None]
  floats = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
  dtype = jnp.result_type(*floats) if floats else jnp.result_type(float)
  if jnp.finfo(dtype).bits < 32:
    dtype = jnp.float32
  return jnp.dtype(dtype)


def array(name: str, x, *, ndim: int | Sequence[int], dtype=None,
          shape_doc: str = "") -> jax.Array:
  """``x`` as a JAX array with ``ndim`` dimensions, cast to ``dtype`` if given."""
  try:
    x = jnp.asarray(x) if dtype is None else jnp.asarray(x, dtype=dtype)
  except (TypeError, ValueError) as err:
    raise ValueError(f"{name} must be a numeric array: {err}") from None
  allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
  if x.ndim not in allowed:
    dims = " or ".join(f"{d}-d" for d in allowed)
    doc = f" {shape_doc}" if shape_doc else ""
    raise ValueError(f"{name} must be a {dims} array{doc}, got shape {x.shape}")
  return x


def same_size(name_a: str, size_a: int, name_b: str, size_b: int,
              what: str) -> None:
  if size_a != size_b:
    raise ValueError(
        f"{name_a} and {name_b} must agree on the number of {what}: "
        f"got {size_a} and {size_b}")


@jax.jit
def _all_finite(x):
  return jnp.all(jnp.isfinite(x))


def finite(name: str, x) -> None:
  if is_concrete(x) and not bool(_all_finite(x)):
    raise ValueError(f"{name} must be finite, but contains NaN or infinity")


def in_range(name: str, x, low: float, high: float, where=None) -> None:
  if not (is_concrete(x) and (where is None or is_concrete(where))):
    return
  values = np.asarray(x)
  if where is not None:
    values = values[np.broadcast_to(np.asarray(where, bool), values.shape)]
  if values.size and not (np.all(values >= low) and np.all(values <= high)):
    bad = values[~((values >= low) & (values <= high))]
    example = bad.flat[0] if bad.size else values.flat[0]
    raise ValueError(
        f"{name} must lie in [{low}, {high}], found {example!r}")


def nonnegative(name: str, x) -> None:
  finite(name, x)
  if is_concrete(x) and x.size and bool(jnp.any(x < 0)):
    raise ValueError(f"{name} must be non-negative, found {float(jnp.min(x))!r}")


def positive_int(name: str, value, *, upper: int | None = None,
                 upper_doc: str = "") -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  if value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value}")
  if upper is not None and value > upper:
    raise ValueError(f"{name} must be at most {upper_doc or upper}, got {value}")
  return int(value)


def bool_mask(name: str, mask, shape: tuple[int, ...]) -> jax.Array:
  """A boolean mask of exactly ``shape``; ``None`` means all True."""
  if mask is None:
    return jnp.ones(shape, bool)
  mask = jnp.asarray(mask)
  if mask.shape != tuple(shape):
    raise ValueError(f"{name} must have shape {tuple(shape)}, got {mask.shape}")
  if mask.dtype != jnp.bool_:
    if is_concrete(mask) and not bool(jnp.all((mask == 0) | (mask == 1))):
      raise ValueError(f"{name} must be boolean (or 0/1)")
    mask = mask.astype(bool)
  return mask


def weights(name: str, w, n: int, dtype) -> jax.Array:
  """Non-negative per-row weights [n]; ``None`` means all ones."""
  if w is None:
    return jnp.ones((n,), dtype)
  w = array(name, w, ndim=1, dtype=dtype, shape_doc="[n]")
  if w.shape[0] != n:
    raise ValueError(f"{name} must have length {n}, got {w.shape[0]}")
  nonnegative(name, w)
  if is_concrete(w) and n and not bool(jnp.any(w > 0)):
    raise ValueError(f"{name} must have at least one positive entry")
  return w


def prng_key(name: str, key) -> None:
  """A single typed ``jax.random.key`` or a raw uint32 [2] key."""
  dtype = getattr(key, "dtype", None)
  typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
  raw = dtype == jnp.uint32 and jnp.shape(key) == (2,)
  if not (typed and jnp.ndim(key) == 0 or raw):
    raise ValueError(
        f"{name} must be a single jax.random.key (or a raw uint32 [2] key), "
        f"got {type(key).__name__} of dtype {dtype} and shape {jnp.shape(key)}")


def widths(name: str, values) -> tuple[int, ...]:
  """A sequence of positive layer widths, as a tuple of ints."""
  try:
    values = tuple(values)
  except TypeError:
    raise ValueError(
        f"{name} must be a sequence of positive widths, got {values!r}") from None
  return tuple(positive_int(name, w) for w in values)


def positive_scalar(name: str, value, dtype) -> jax.Array:
  """A finite positive scalar (checked when concrete), as a ``dtype`` array."""
  value = jnp.asarray(value, dtype)
  if value.ndim != 0:
    raise ValueError(f"{name} must be a scalar, got shape {value.shape}")
  finite(name, value)
  if is_concrete(value) and not bool(value > 0):
    raise ValueError(f"{name} must be positive, got {float(value)!r}")
  return value


def float_dtype(dtype, *arrays) -> jnp.dtype:
  """``dtype`` if given (it must be floating), else the arrays' compute dtype."""
  dtype = jnp.dtype(compute_dtype(*arrays) if dtype is None else dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"dtype must be a floating dtype, got {dtype}")
  return dtype
