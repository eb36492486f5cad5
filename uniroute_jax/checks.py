"""How uniroute_jax checks its arguments: the one place where this is decided.

Every public function is safe inside a user's ``jax.jit`` and ``jax.vmap``,
with arrays passed or closed over, and does no device-to-host transfer once
traced. So checks come in three kinds, each where it costs nothing it
should not:

1. **Shapes, dtypes and static arguments** are checked when a function is
   traced (they read only ``.shape`` and ``.dtype``, which tracers have
   too). A bad one raises ``ValueError`` naming the argument and saying what
   was expected, jitted or not.
2. **Values of data entering from the host** (NaN, ranges, signs, empty
   pools, missing labels) are checked once, on the host, with NumPy, where
   that data enters: the loaders and ``RoutingData.validate``, the
   ``Router`` constructors, ``Router.add_models`` / ``add_psi`` and
   ``Router.load``, ``protocol.evaluate``, and the command line. The rule
   is the same everywhere: values given as host data (NumPy arrays, lists,
   Python numbers) are inspected before they reach a device; a
   ``jax.Array`` is device data and is never read back for a check.
3. **The numerical core** (k-means, Psi, routing, switch paths, curves and
   metrics, the baselines, the learned maps and loss predictors) never
   inspects values: a check there would block on the device, and inside a
   jit it cannot be evaluated at all. Its preconditions on values are
   written down as ``checkify`` checks that are traced only when asked for:
   run a call under :func:`checked` to have them run on the device and
   raise ``ValueError``. Plain calls carry no check at all. What a function
   returns for values outside its preconditions is documented with the
   function, e.g. a routing choice of -1 for a cluster index outside
   [0, k).

Examples:
  >>> import jax.numpy as jnp
  >>> from uniroute_jax import route
  >>> psi, cost = jnp.array([[0.1, 0.4], [0.5, 0.6]]), jnp.array([10.0, 1.0])
  >>> route(jnp.array([0, 7]), psi, cost, 0.0).choice     # cluster 7 does not exist
  Array([ 0, -1], dtype=int32)
  >>> checked(route)(jnp.array([0, 7]), psi, cost, 0.0)
  Traceback (most recent call last):
  ...
  ValueError: route: membership must hold cluster indices in [0, 2)
"""

from __future__ import annotations

import contextvars
import functools
import math
import os
import warnings
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = ["ArgumentError", "ArgumentWarning", "MissingFileError", "checked", "kernel", "require"]


class _NamesArguments:
  """A message written as a function of a namer (see ArgumentError)."""

  def __init__(self, message: Callable[[Callable[[str], str]], str]):
    self._message = message
    super().__init__(message(_keyword))

  def render(self, name: Callable[[str], str | None]) -> str:
    """The message with each argument named by ``name`` (its keyword where
    ``name`` returns None)."""
    return self._message(lambda argument: name(argument) or _keyword(argument))


class ArgumentError(_NamesArguments, ValueError):
  """A ``ValueError`` whose message names arguments the caller can change.

  The message is written once, as a function of a namer: in Python an
  argument reads as its keyword (``costs``), and the command line passes
  its own namer so that the same error names its flag (``--costs``).

  Examples:
    >>> err = ArgumentError(lambda name: f"give a cost file with {name('costs')}")
    >>> str(err)
    'give a cost file with costs'
    >>> err.render({"costs": "--costs"}.get)
    'give a cost file with --costs'
  """


class ArgumentWarning(_NamesArguments, UserWarning):
  """A ``UserWarning`` that names arguments as :class:`ArgumentError` does."""


class MissingFileError(ArgumentError, FileNotFoundError):
  """An :class:`ArgumentError` about a file that does not exist."""


def _keyword(argument: str) -> str:
  return argument


# ------------------------------------------------ 3. checkify (the core)

# Whether the code being traced is to carry its value checks: True only
# while :func:`checked` traces a call. It is a static argument of every
# kernel (see :func:`kernel`), so checked and plain programs are compiled
# and cached apart, and plain programs carry no check at all.
_CHECKING = contextvars.ContextVar("uniroute_jax_checking", default=False)


def require(predicate, message: str, *format_args) -> None:
  """A value precondition of the numerical core, checked under :func:`checked`.

  ``message`` may hold ``{}`` fields filled with ``format_args`` (traced
  values). Anywhere else this adds nothing to the program.
  """
  if _CHECKING.get():
    checkify.debug_check(predicate, message, *format_args)


def checking() -> bool:
  """Whether the computation being traced is run under :func:`checked` (a
  kernel may then take a path that ``checkify`` can check)."""
  return _CHECKING.get()


def kernel(fn: Callable | None = None, *, static_argnames: Sequence[str] = ()):
  """``jax.jit`` for the library's kernels: the checking state is a static
  argument, so a kernel traced under :func:`checked` keeps its checks and a
  plain one has none."""
  if fn is None:
    return functools.partial(kernel, static_argnames=static_argnames)

  # Not functools.wraps: jit must see this signature, which takes the
  # kernel's static arguments (all passed by keyword) and the checking state.
  def traced(*args, _checking: bool, **kwargs):
    token = _CHECKING.set(_checking)
    try:
      return fn(*args, **kwargs)
    finally:
      _CHECKING.reset(token)

  traced.__name__ = traced.__qualname__ = fn.__name__

  jitted = jax.jit(traced, static_argnames=tuple(static_argnames) + ("_checking",))

  @functools.wraps(fn)
  def call(*args, **kwargs):
    return jitted(*args, _checking=_CHECKING.get(), **kwargs)

  call.lower = lambda *a, **k: jitted.lower(*a, _checking=_CHECKING.get(), **k)
  return call


def checked(fn: Callable) -> Callable:
  """``fn`` with its value preconditions checked: a failed one raises
  ``ValueError``.

  The call is traced with its checks under ``checkify`` and compiled once
  per set of shapes, so the checks run on the device and only their verdict
  comes back. Arrays are traced; every other argument (sizes, method names,
  Python numbers) is compiled in, as a static argument.

  Examples:
    >>> import jax.numpy as jnp
    >>> from uniroute_jax import deferral_curve
    >>> loss = jnp.array([[0.0, 2.0]])        # a loss outside [0, 1]
    >>> checked(deferral_curve)(loss, loss, jnp.array([1.0, 2.0]))
    Traceback (most recent call last):
    ...
    ValueError: deferral_curve: true_loss must lie in [0, 1]
  """

  @functools.wraps(fn)
  def call(*args, **kwargs):
    arrays, rebuild = _split_static(args, kwargs)
    if any(isinstance(a, jax.core.Tracer) for a in arrays):
      name = getattr(fn, "__name__", "fn")
      raise ValueError(
          f"checked({name}) raises on the host, so it cannot run inside "
          f"jax.jit, vmap or grad: check the transformed function instead, "
          f"e.g. checked(jax.jit(f)) or checked(jax.vmap(f))")
    token = _CHECKING.set(True)
    try:
      err, out = _checkified(fn, rebuild)(*arrays)
    finally:
      _CHECKING.reset(token)
    message = err.get()
    if message is not None:
      raise ValueError(message.split(" (`check` failed)")[0]) from None
    return out

  return call


def _split_static(args, kwargs):
  """(array leaves, rebuild) of a call's arguments: leaves that are arrays
  are traced, everything else (Python numbers, strings, tuples of sizes)
  stays static."""
  leaves, treedef = jax.tree.flatten((args, kwargs))
  is_array = [isinstance(x, (jax.Array, np.ndarray, np.generic)) for x in leaves]
  arrays = [x for x, a in zip(leaves, is_array) if a]
  static = tuple((i, x) for i, (x, a) in enumerate(zip(leaves, is_array))
                 if not a)
  return arrays, _Rebuild(treedef, tuple(is_array), static)


class _Rebuild:
  """Hashable recipe that puts the static leaves back between the arrays."""

  def __init__(self, treedef, is_array, static):
    self.treedef, self.is_array, self.static = treedef, is_array, static
    try:
      self._key = hash((treedef, is_array, static))
    except TypeError:
      self._key = id(self)

  def __hash__(self):
    return self._key

  def __eq__(self, other):
    return (isinstance(other, _Rebuild) and self.treedef == other.treedef
            and self.is_array == other.is_array and self.static == other.static)

  def __call__(self, arrays):
    arrays, static = iter(arrays), dict(self.static)
    leaves = [next(arrays) if a else static[i]
              for i, a in enumerate(self.is_array)]
    return jax.tree.unflatten(self.treedef, leaves)


@functools.lru_cache(maxsize=64)
def _checkified(fn, rebuild):
  def call(*arrays):
    args, kwargs = rebuild(arrays)
    return fn(*args, **kwargs)

  return jax.jit(checkify.checkify(call, errors=checkify.user_checks))


# ------------------------------------------- 1. trace-time shape checks


def array(name: str, x, *, ndim: int | Sequence[int], shape_doc: str = ""):
  """``x`` with ``ndim`` dimensions and a numeric dtype, as an array-like.

  JAX arrays (tracers included) and NumPy arrays are returned as they are;
  anything else (lists, numbers) becomes a NumPy array. Nothing is copied
  to a device and no value is read.
  """
  if not isinstance(x, (jax.Array, np.ndarray)):
    if isinstance(x, (str, bytes)) or x is None:
      raise ValueError(_array_doc(name, ndim, shape_doc, f"got {x!r}"))
    try:
      x = np.asarray(x)
    except (TypeError, ValueError) as err:
      raise ValueError(_array_doc(name, ndim, shape_doc, f"got {err}")) from None
  dtype = x.dtype
  if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
    raise ValueError(_array_doc(name, ndim, shape_doc, f"got dtype {dtype}"))
  allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
  if x.ndim not in allowed:
    raise ValueError(_array_doc(name, ndim, shape_doc, f"got shape {x.shape}"))
  return x


def _array_doc(name, ndim, shape_doc, found) -> str:
  allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
  dims = " or ".join(f"{d}-d" for d in allowed)
  doc = f" {shape_doc}" if shape_doc else ""
  return f"{name} must be a numeric {dims} array{doc}, {found}"


def float_array(name: str, x, *, ndim, shape_doc: str = ""):
  """:func:`array` that must not be complex (losses, costs, embeddings)."""
  if type(x) is int:
    # 3 and 3.0 are one value: one dtype, one trace.
    x = scalar(name, x)
  x = array(name, x, ndim=ndim, shape_doc=shape_doc)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    raise ValueError(f"{name} must be real, got dtype {x.dtype}")
  return x


def integer_array(name: str, x, *, ndim, shape_doc: str = ""):
  """:func:`array` of an integer dtype (indices)."""
  x = array(name, x, ndim=ndim, shape_doc=shape_doc)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(f"{name} must hold integers {shape_doc}, got dtype {x.dtype}")
  return x


def compute_dtype(*arrays) -> np.dtype:
  """Floating dtype to compute in: the inputs' promoted float, at least 32-bit.

  Integer and boolean inputs (0/1 labels) compute in JAX's default float;
  float16 and bfloat16 inputs accumulate in float32. Only dtypes are read.
  """
  dtypes = [jnp.result_type(a) for a in arrays if a is not None]
  floats = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
  dtype = jnp.result_type(*floats) if floats else jnp.result_type(float)
  if jnp.finfo(dtype).bits < 32:
    dtype = jnp.float32
  return jax.dtypes.canonicalize_dtype(dtype)


def float_dtype(dtype, *arrays) -> np.dtype:
  """``dtype`` if given (it must be floating), else the arrays' compute dtype."""
  if dtype is None:
    return compute_dtype(*arrays)
  try:
    dtype = np.dtype(dtype)
  except TypeError:
    raise ValueError(f"dtype must be a floating dtype, got {dtype!r}") from None
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"dtype must be a floating dtype, got {dtype}")
  return jax.dtypes.canonicalize_dtype(dtype)


def same_size(name_a: str, size_a: int, name_b: str, size_b: int,
              what: str) -> None:
  if size_a != size_b:
    raise ValueError(
        f"{name_a} and {name_b} must agree on the number of {what}: "
        f"got {size_a} and {size_b}")


def cost(name: str, x, n: int, m: int, *, per_prompt: bool = True):
  """Costs of m LLMs: [m], or [n, m] per prompt when ``per_prompt``."""
  x = float_array(name, x, ndim=(1, 2) if per_prompt else 1,
                  shape_doc="[m] or [n, m]" if per_prompt else "[m]")
  allowed = ((m,), (n, m)) if per_prompt else ((m,),)
  if x.shape not in allowed:
    wanted = f"[{m}] or [{n}, {m}]" if per_prompt else f"[{m}]"
    raise ValueError(f"{name} must have shape {wanted}, got {x.shape}")
  return x


def mask(name: str, x, shape: tuple[int, ...]):
  """A boolean (or 0/1 integer) mask of exactly ``shape``; None means all True.

  Returned as given (None stays None): the kernel makes it boolean.
  """
  if x is None:
    return None
  x = array(name, x, ndim=len(shape), shape_doc=str(list(shape)))
  if tuple(x.shape) != tuple(shape):
    raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")
  if not (x.dtype == np.bool_ or jnp.issubdtype(x.dtype, jnp.integer)):
    raise ValueError(f"{name} must be boolean (or 0/1 integers), got dtype {x.dtype}")
  return x


def weights(name: str, w, n: int):
  """Optional per-row weights [n]; None means all ones."""
  if w is None:
    return None
  w = float_array(name, w, ndim=1, shape_doc="[n]")
  if w.shape[0] != n:
    raise ValueError(f"{name} must have length {n}, got {w.shape[0]}")
  return w


def membership(x, k: int):
  """Cluster memberships of a pool with ``k`` clusters: [n] integer indices
  or [n, k] probabilities (as ``membership``, the name every routing
  function gives them)."""
  x = array("membership", x, ndim=(1, 2),
            shape_doc="[n] (clusters) or [n, k] (probabilities)")
  if x.ndim == 2:
    float_array("membership", x, ndim=2, shape_doc="[n, k]")
    if x.shape[1] != k:
      raise ValueError(f"membership must have {k} columns like psi has rows, "
                       f"got shape {x.shape}")
  elif not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError("membership must hold integer cluster indices when 1-d")
  return x


def membership_dtype(membership, *arrays) -> np.dtype:
  """:func:`compute_dtype` of ``arrays`` and a soft ``membership`` (hard
  indices are integers and do not count)."""
  return compute_dtype(membership if membership.ndim == 2 else None, *arrays)


def availability(pool_mask, m: int):
  """[m] bool: which LLMs a traced computation may route to (all of them
  for None)."""
  return jnp.ones((m,), bool) if pool_mask is None else pool_mask.astype(bool)


def require_membership(membership, k: int, where: str) -> None:
  """:func:`require` that hard memberships are indices in [0, k) and soft
  ones non-negative."""
  if membership.ndim == 1:
    require(jnp.all((membership >= 0) & (membership < k)),
            f"{where}: membership must hold cluster indices in [0, {k})")
  else:
    require(jnp.all(membership >= 0),
            f"{where}: membership must be non-negative")


def require_costs(cost, lambdas=None, where: str = "route",
                  cost_name: str = "cost") -> None:
  """:func:`require` that costs are finite and non-negative, and so are
  the lambdas when given."""
  require(jnp.all(cost >= 0) & jnp.all(jnp.isfinite(cost)),
          f"{where}: {cost_name} must be finite and non-negative")
  if lambdas is not None:
    require(jnp.all(lambdas >= 0), f"{where}: lambdas must be non-negative")


def shown(value) -> str:
  """``repr(value)`` for a message, a NumPy scalar shown as the Python
  number or string it holds (``-1.0``, not ``np.float32(-1.0)``)."""
  if isinstance(value, np.generic):
    value = value.item()
  return repr(value)


def scalar(name: str, x):
  """A real scalar (a Python number, a 0-d array or a tracer), as a kernel
  is to take it: a Python number as a Python float, so that 2 and 2.0 are
  one value and one trace; anything else as :func:`float_array` returns it.
  """
  if isinstance(x, bool):
    raise ValueError(f"{name} must be a number, got {x!r}")
  if type(x) in (int, float):
    try:
      return float(x)
    except OverflowError:
      raise ValueError(f"{name} must be a float, got an integer of "
                       f"{len(str(abs(x)))} digits") from None
  return float_array(name, x, ndim=0, shape_doc="(a scalar)")


def lambdas(x):
  """Cost trade-offs ``lambdas``: a scalar or [L], as a kernel is to take
  them. Host integers become floats (kernels cast lambdas to their compute
  dtype anyway), so ``3`` and ``3.0`` trace once."""
  x = float_array("lambdas", x, ndim=(0, 1), shape_doc="(a scalar or [L])")
  if isinstance(x, np.ndarray) and not np.issubdtype(x.dtype, np.floating):
    x = x.astype(np.float64)
  return x


def positive_int(name: str, value, *, upper: int | None = None,
                 upper_doc: str = "") -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be a positive integer, got {shown(value)}")
  if value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value}")
  if upper is not None and value > upper:
    raise ValueError(f"{name} must be at most {upper_doc or upper}, got {value}")
  return int(value)


def prng_key(name: str, key) -> None:
  """A single typed ``jax.random.key`` or a raw uint32 [2] key."""
  dtype = getattr(key, "dtype", None)
  typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
  raw = dtype == jnp.uint32 and jnp.shape(key) == (2,)
  if not (typed and jnp.ndim(key) == 0 or raw):
    raise ValueError(
        f"{name} must be a single jax.random.key (or a raw uint32 [2] key), "
        f"got {type(key).__name__} of dtype {dtype} and shape "
        f"{getattr(key, 'shape', ())}")


def widths(name: str, values) -> tuple[int, ...]:
  """A sequence of positive layer widths, as a tuple of ints."""
  if isinstance(values, (str, bytes)):
    raise ValueError(f"{name} must be a sequence of positive widths, got {values!r}")
  try:
    values = tuple(values)
  except TypeError:
    raise ValueError(
        f"{name} must be a sequence of positive widths, got {values!r}") from None
  return tuple(positive_int(name, w) for w in values)


# ------------------------------------------- 2. host values at the boundary


def is_host(x) -> bool:
  """True for data that lives on the host (NumPy, lists, numbers): the
  values a boundary function inspects. JAX arrays are device data."""
  return not isinstance(x, jax.Array)


def host_values(x) -> np.ndarray | None:
  """``x`` as a NumPy array when it is host data, else None (not inspected)."""
  if not is_host(x):
    return None
  return np.asarray(x)


def host_finite(name: str, x) -> None:
  values = host_values(x)
  if values is not None and not np.all(np.isfinite(values)):
    raise ValueError(f"{name} must be finite, but contains NaN or infinity")


def host_in_range(name: str, x, low: float, high: float, where=None) -> None:
  values = host_values(x)
  if values is None:
    return
  if where is not None:
    where = host_values(where)
    if where is None:
      return
    values = values[np.broadcast_to(np.asarray(where, bool), values.shape)]
  inside = (values >= low) & (values <= high)
  if values.size and not np.all(inside):
    raise ValueError(
        f"{name} must lie in [{low}, {high}], found "
        f"{shown(values[~inside].flat[0])}")


def host_nonnegative(name: str, x, *, allow_inf: bool = False) -> None:
  """Host values are non-negative and finite (or +inf, with ``allow_inf``)."""
  if allow_inf:
    values = host_values(x)
    if values is not None and np.any(np.isnan(values)):
      raise ValueError(f"{name} must not be NaN")
  else:
    host_finite(name, x)
  values = host_values(x)
  if values is not None and values.size and np.any(values < 0):
    raise ValueError(f"{name} must be non-negative, found "
                     f"{shown(values.min())}")


def host_bool_mask(name: str, x) -> None:
  values = host_values(x)
  if values is not None and values.dtype != np.bool_ and not np.all(
      (values == 0) | (values == 1)):
    raise ValueError(f"{name} must be boolean (or 0/1)")


def host_labelled(name: str, mask_values, model_names=None) -> None:
  """Every LLM (column) has at least one labelled prompt."""
  values = host_values(mask_values)
  if values is None or values.ndim != 2 or not values.shape[1]:
    return
  empty = np.nonzero(~np.any(values.astype(bool), axis=0))[0]
  if empty.size:
    who = (repr(model_names[int(empty[0])]) if model_names is not None
           else f"column {int(empty[0])}")
    raise ValueError(f"{name}: LLM {who} has no labelled prompt")


def host_positive_weights(name: str, w) -> None:
  host_nonnegative(name, w)
  values = host_values(w)
  if values is not None and values.size and not np.any(values > 0):
    raise ValueError(f"{name} must have at least one positive entry")



def file_path(name: str, value) -> str:
  """``value`` as a path string; ``ValueError`` naming ``name`` otherwise."""
  if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
    raise ArgumentError(lambda arg: (
        f"{arg(name)} must be a file path (a str or os.PathLike), got "
        f"{value!r}"))
  return os.fspath(value)


def host_points(name: str, x, num_clusters: int, dtype,
                sample_weights=None) -> None:
  """Points for k-means: finite, with squared distances that ``dtype`` can
  sum, and (a warning otherwise) at least ``num_clusters`` distinct points
  of positive weight; weights non-negative with a positive entry."""
  values = host_values(x)
  if sample_weights is not None:
    host_positive_weights("weights",
                          weights("weights", sample_weights, x.shape[0]))
  if values is None or not values.size:
    return
  host_finite(name, values)
  n = values.shape[0]
  mean = values.mean(axis=0, dtype=np.float64)
  # Any two points lie within 2 * reach of each other, so no squared
  # distance k-means forms exceeds 4 * reach**2, nor its sum over n points
  # n times that; computed in float64 blocks to bound host memory.
  with np.errstate(over="ignore"):   # an overflow is the finding itself
    reach_sq = max(
        float(np.max(np.sum((block.astype(np.float64) - mean) ** 2, axis=1)))
        for block in np.array_split(values, max(1, n // 65536)))
  limit = float(np.finfo(dtype).max)
  if not 4.0 * reach_sq * n <= limit:
    raise ValueError(
        f"{name}: points lie up to {math.sqrt(reach_sq):.3g} from their mean, "
        f"so k-means' sums of squared distances over {n} points would "
        f"overflow {np.dtype(dtype).name} (at most {limit:.3g}); rescale "
        f"{name} (k-means does not depend on scale) or compute in float64")
  w = None if sample_weights is None else host_values(sample_weights)
  positive = values if w is None else values[np.asarray(w).reshape(-1) > 0]
  distinct = _distinct_rows(positive, num_clusters)
  if distinct < num_clusters:
    warnings.warn(ArgumentWarning(lambda arg: (
        f"{arg(name)}: only {distinct} distinct point(s) of positive weight "
        f"for {arg('num_clusters')} {num_clusters}, so "
        f"{num_clusters - distinct} cluster(s) repeat another's centroid; use "
        "fewer clusters")), stacklevel=3)


def _distinct_rows(values: np.ndarray, enough: int) -> int:
  """The number of distinct rows, or at least ``enough`` once that many are
  found (the first rows usually suffice, which keeps this cheap)."""
  rows = np.ascontiguousarray(values + 0)   # + 0 makes -0.0 equal to 0.0
  as_bytes = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))
  head = np.unique(as_bytes[:4 * enough]).size
  if head >= enough or rows.shape[0] <= 4 * enough:
    return head
  return np.unique(as_bytes).size
