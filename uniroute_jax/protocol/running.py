"""Running methods over many trials: compiled batches and devices.

A batch of trials is one compiled call (:func:`run_batch`): every method on
every trial of the batch, each trial a pure function of the dataset's
arrays, its split and a key. Within a batch, trials are vectorised
(``vmap``) or visited one after the other (``lax.map``): on an accelerator
vectorising fills the device; on a CPU one trial already keeps the cores
busy with its matmuls, and visiting trials in turn lets each k-means run
stop at its own iteration count instead of the slowest trial's. Fits with
a fixed number of small steps (the clairvoyant MLP) gain from vmapped
trials even there, so each method is mapped with its own batch
(``Method.vectorize_on_cpu``).

On a CPU :func:`run_trials` runs two batches at once from two host threads
(:mod:`uniroute_jax.threads`); the results do not depend on it.
"""

from __future__ import annotations

import itertools
import zlib
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax import blocks, checks, metrics, risk, threads
from uniroute_jax.baselines import knn
from uniroute_jax.protocol.methods import (DEFAULT_METHODS, Method, as_methods)
from uniroute_jax.protocol.splits import Split
from uniroute_jax.protocol.trials import (DatasetArrays, TrialData,
                                          gather_trial, test_curve)
from uniroute_jax.types import Array, RoutingData


class TrialMetrics(NamedTuple):
  """Per-trial results of one method, each [T]; ``curve_quality`` [T, G].

  The excess risk over the per-prompt oracle is measured at the lambdas
  ``excess_lambdas`` [L] of :func:`run_trials`, in relative-cost units
  (each cost divided by the dearest test LLM's mean test cost, as the
  curves' x axis), so trials and datasets share one scale:
  ``excess``, ``estimation``, ``approximation`` are [T, L], and the same
  split integrated over the cost range, in Area, is ``area_estimation`` and
  ``area_approximation`` [T] (:mod:`uniroute_jax.risk`). ``excess`` is NaN
  for methods that route by no predicted loss; the split is NaN for those
  that are not cluster routers.
  """

  area: Array
  area50: Array
  qnc: Array
  peak_quality: Array
  best_quality: Array
  chosen: Array
  curve_quality: Array
  excess: Array
  estimation: Array
  approximation: Array
  area_estimation: Array
  area_approximation: Array


class PoolPoints(NamedTuple):
  """Each test LLM alone on the test prompts, [T, m_test] each."""

  relative_cost: Array
  quality: Array


EXCESS_LAMBDAS = np.concatenate([[0.0], np.geomspace(0.01, 100.0, 21)])
"""Default lambdas of the protocol's excess risks, in relative-cost units.
Two LLMs swap at lambda = (difference in loss) / (difference in relative
cost), so 0 and 0.01 .. 100 cover every swap where both differences are at
least 0.01."""


def _pool_and_shared(trial: TrialData):
  """The test LLMs' own points, and what every method's excess needs of a
  trial: (the oracle's Area, the cost scale of relative costs)."""
  points = metrics.single_llm_points(trial.test_loss, trial.test_cost,
                                     trial.test_weights)
  oracle_area = metrics.deferral_metrics(metrics.deferral_curve(
      trial.test_loss, trial.test_loss, trial.test_cost,
      weights=trial.test_weights, routing_cost=trial.test_cost)).area
  top = jnp.max(points.cost)
  return (PoolPoints(points.relative_cost, points.quality),
          (oracle_area, jnp.where(top > 0, top, 1.0)))


def _excess(result, trial: TrialData, lambdas, area, shared):
  """(excess, estimation, approximation [L], area estimation,
  area approximation) of one method's output on one trial."""
  dtype = trial.test_loss.dtype
  nan_grid = jnp.full(lambdas.shape, jnp.nan, dtype)
  nan = jnp.array(jnp.nan, dtype)
  if result.gamma is None:
    return nan_grid, nan_grid, nan_grid, nan, nan
  oracle_area, scale = shared
  ranked_by = (trial.test_route_cost if result.routing_cost is None
               else result.routing_cost)

  def excess_of(gamma):
    return risk.excess_risk(gamma, trial.test_loss, trial.test_cost / scale,
                            lambdas, weights=trial.test_weights,
                            routing_cost=ranked_by / scale).excess

  excess = excess_of(result.gamma)
  if result.cluster_gamma is None:
    return excess, nan_grid, nan_grid, nan, nan
  approximation = excess_of(result.cluster_gamma)
  cluster_area = metrics.deferral_metrics(
      test_curve(result.cluster_gamma, trial)).area
  return (excess, excess - approximation, approximation, cluster_area - area,
          oracle_area - cluster_area)


def method_key(key, method: Method):
  """A method's own key: its results do not depend on which other methods
  run beside it."""
  return jax.random.fold_in(key, zlib.crc32(method.name.encode()) & 0x7FFFFFFF)


def dataset_arrays(data: RoutingData, *, neighbor_list_length: int = 0,
                   neighbor_rows=None) -> DatasetArrays:
  """A dataset as device arrays in the compute dtype: what
  :func:`run_batch` gathers trials from.

  Args:
    data: the dataset.
    neighbor_list_length: with L > 0, the prompts' L nearest prompts
      (``knn.neighbor_lists``, cosine) are found too, for the methods that
      read them (``Method.neighbor_list_length``).
    neighbor_rows: optional host array of the prompts whose lists are
      needed (e.g. every trial's validation prompts, as
      :func:`run_trials` passes); the other rows of the lists are zeros.
      Default: every prompt.
  """
  dtype = checks.compute_dtype(data.embeddings, data.loss)
  emb = jnp.asarray(data.embeddings, dtype)
  length = int(neighbor_list_length)
  lists = None
  if length > 0:
    rows = (np.arange(data.num_prompts) if neighbor_rows is None
            else np.unique(np.asarray(neighbor_rows, np.int64)))
    lists = _neighbor_lists(emb, length, rows)
  return DatasetArrays(
      emb, jnp.asarray(data.loss, dtype), jnp.asarray(data.mask, bool),
      jnp.asarray(data.cost, dtype), lists)


# Rows of one call that finds neighbour lists: every call has this shape,
# so it compiles once, whichever rows a run needs.
_LIST_ROWS = 512


def _neighbor_lists(emb, length: int, rows: np.ndarray):
  """[n, length] ``knn.neighbor_lists`` of ``rows`` (zeros elsewhere), in
  blocks of :data:`_LIST_ROWS` from two host threads on a CPU: XLA:CPU runs
  a top-k on one core."""
  n = emb.shape[0]
  if not np.all((rows >= 0) & (rows < n)):
    raise ValueError(f"neighbor_rows must lie in [0, {n})")
  size = min(_LIST_ROWS, n)
  # The last block is padded by repeating a row.
  padded = rows[np.minimum(np.arange(-(-len(rows) // size) * size),
                           len(rows) - 1)].reshape(-1, size).astype(np.int32)
  found = list(threads.in_order(
      lambda r: knn.neighbor_lists(emb, length=length, rows=r), padded,
      threads.workers(None)))
  lists = jnp.zeros((n, length), jnp.int32)
  return lists.at[jnp.asarray(padded.reshape(-1))].set(jnp.concatenate(found))


@checks.kernel(static_argnames=("curve_points", "vectorize"))
def run_batch(arrays, splits: Split, keys, methods: tuple[Method, ...],
              excess_lambdas=None, *, curve_points: int,
              vectorize: int | tuple[int, ...]):
  """Every method on every trial of a batch: one compiled computation.

  Args:
    arrays: :func:`dataset_arrays` of the dataset.
    splits: a :class:`Split` with a leading trial axis [b].
    keys: [b] trial keys.
    methods: resolved methods (their hyper-parameters are traced).
    excess_lambdas: [L] lambdas of the excess risks, in relative-cost
      units (traced); default :data:`EXCESS_LAMBDAS`.
    curve_points: size of the relative-cost grid the curves are sampled on.
    vectorize: how many trials are vmapped together (``lax.map``'s batch),
      one for all methods or one per method.

  Returns:
    {"pool": PoolPoints, method name: TrialMetrics}, arrays [b, ...].
  """
  grid = jnp.linspace(0.0, 1.0, curve_points, dtype=arrays[1].dtype)
  lambdas = jnp.asarray(EXCESS_LAMBDAS if excess_lambdas is None
                        else excess_lambdas, arrays[1].dtype)
  if isinstance(vectorize, int):
    vectorize = (vectorize,) * len(methods)
  if len(vectorize) != len(methods):
    raise ValueError(f"vectorize must give one batch per method "
                     f"({len(methods)}), got {vectorize}")

  def pool(split):
    return _pool_and_shared(gather_trial(arrays, split))

  def metrics_of(method):
    def one(item):
      split, key, shared = item
      trial = gather_trial(arrays, split)
      result = method.run(trial, method_key(key, method))
      m = metrics.deferral_metrics(result.curve)
      env = metrics.upper_envelope(result.curve)
      return TrialMetrics(
          m.area, m.area50, m.qnc, m.peak_quality, result.curve.best_quality,
          jnp.asarray(result.chosen, jnp.int32), metrics.interpolate(env, grid),
          *_excess(result, trial, lambdas, m.area, shared))
    return one

  # What every method's excess needs of a trial is computed once a trial.
  points, shared = jax.lax.map(pool, splits)
  out = {"pool": points}
  # Each method is mapped on its own: one may fill the device best with
  # trials vmapped, another visiting them in turn.
  for method, batch in zip(methods, vectorize):
    out[method.name] = blocks.map_batched(metrics_of(method),
                                          (splits, keys, shared), batch)
  return out


def check_excess_lambdas(excess_lambdas, dtype) -> np.ndarray:
  """The lambdas of the excess risks on the host, checked: [L], finite and
  non-negative (default :data:`EXCESS_LAMBDAS`)."""
  if excess_lambdas is None:
    return EXCESS_LAMBDAS.astype(dtype)
  values = np.asarray(excess_lambdas)
  if values.ndim != 1 or not np.issubdtype(values.dtype, np.number):
    raise ValueError(f"excess_lambdas must be a 1-d array of numbers, got "
                     f"shape {values.shape} and dtype {values.dtype}")
  if not np.all(np.isfinite(values)) or np.any(values < 0):
    raise ValueError("excess_lambdas must be finite and non-negative, got "
                     f"{values.tolist()}")
  return values.astype(dtype)


def _replicated(mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _by_trial(mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))


def trial_mesh(mesh):
  """``mesh`` (one axis) in JAX's automatic sharding mode, with the
  shardings of the dataset (replicated) and of a batch (split by trial)."""
  if not isinstance(mesh, jax.sharding.Mesh) or len(mesh.axis_names) != 1:
    raise ValueError(f"mesh must be a jax.sharding.Mesh with one axis, got "
                     f"{mesh!r}")
  # Only the devices and the axis name matter: the compiler propagates the
  # trial sharding of the inputs (whatever mode the caller's mesh is in),
  # and trials never interact.
  mesh = jax.sharding.Mesh(mesh.devices, mesh.axis_names,
                           axis_types=(jax.sharding.AxisType.Auto,))
  return mesh, _replicated(mesh), _by_trial(mesh)


def _default_vectorize(method: Method, batch_size: int) -> int:
  if jax.default_backend() != "cpu" or method.vectorize_on_cpu:
    return batch_size
  return 1


def run_trials(key, data: RoutingData, splits: Split, *,
               methods: Sequence[Method | str] = DEFAULT_METHODS,
               curve_points: int = 1001, batch_size: int = 8,
               vectorize: int | None = None, excess_lambdas=None,
               on_progress: Callable[[int, int], None] | None = None,
               mesh: jax.sharding.Mesh | None = None,
               workers: int | None = None
               ) -> tuple[dict[str, TrialMetrics], PoolPoints]:
  """Runs every method on every trial.

  Args:
    key: trial t uses ``fold_in(key, t)``, each method its own key from it.
    data: the dataset (validated by the caller, e.g. :func:`evaluate`).
    splits: a :class:`Split` with a leading trial axis.
    methods: method values or built-in names; resolved here with the
      split's sizes (default candidate grids).
    curve_points: size of the relative-cost grid of the curves.
    batch_size: trials per compiled call (the last batch is padded by
      repeating a trial, then trimmed), so the results do not depend on it.
    vectorize: trials vmapped together inside a call; default all of a
      batch on accelerators, and on a CPU all of a batch for the methods
      that prefer it (``Method.vectorize_on_cpu``), one at a time for the
      others.
    excess_lambdas: [L] non-negative lambdas, in relative-cost units, of
      the per-trial excess risks (:class:`TrialMetrics`); default
      :data:`EXCESS_LAMBDAS`.
    on_progress: called with (trials done, trials in all) as batches end,
      in order.
    mesh: optional one-axis device mesh (e.g. ``jax.make_mesh(
      (jax.device_count(),), ("trials",))``): every batch is split across
      its devices along the trial axis (``NamedSharding``) and the dataset
      is replicated on each; ``batch_size`` is rounded up to a multiple of
      the number of devices.
    workers: batches run at once, each from its own host thread, after the
      first (which compiles); default 2 on a CPU and 1 on accelerators,
      and 1 inside a thread-local JAX option context (``jax.enable_x64``,
      ``jax.default_device``), which new threads would not see. The
      results do not depend on it.

  Returns:
    ({method name: per-trial metrics}, the test LLMs' own points per trial).
  """
  batch_size = checks.positive_int("batch_size", batch_size)
  curve_points = checks.positive_int("curve_points", curve_points)
  num_trials = int(np.shape(splits.train)[0])
  n_train, n_val = int(np.shape(splits.train)[1]), int(np.shape(splits.val)[1])
  methods = tuple(m.resolve(n_train, n_val) for m in as_methods(methods))
  # Only the validation prompts' lists are read.
  arrays = dataset_arrays(data, neighbor_list_length=max(
      m.neighbor_list_length(data.num_prompts, n_train) for m in methods),
      neighbor_rows=np.asarray(splits.val))
  excess_lambdas = check_excess_lambdas(excess_lambdas, arrays[1].dtype)
  trial_keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(
      jnp.arange(num_trials))
  batch_size = min(batch_size, num_trials)
  if mesh is not None:
    mesh, replicated, by_trial = trial_mesh(mesh)
    batch_size = -(-batch_size // mesh.size) * mesh.size
    arrays = jax.device_put(arrays, replicated)
  if vectorize is None:
    vectorize = tuple(_default_vectorize(m, batch_size) for m in methods)
  else:
    vectorize = (checks.positive_int("vectorize", vectorize),) * len(methods)
  vectorize = tuple(min(v, batch_size) for v in vectorize)
  starts = list(range(0, num_trials, batch_size))
  workers = threads.workers(workers)

  def batch(start):
    index = np.minimum(np.arange(start, start + batch_size), num_trials - 1)
    split = Split(*(np.asarray(part)[index] for part in splits))
    keys = trial_keys[index]
    if mesh is not None:
      split, keys = jax.device_put((split, keys), by_trial)
    out = run_batch(arrays, split, keys, methods, excess_lambdas,
                    curve_points=curve_points,
                    vectorize=vectorize)
    keep = min(batch_size, num_trials - start)
    return jax.tree.map(lambda a: np.asarray(a)[:keep], out)

  pieces = []
  # The first batch alone: it compiles the program the others reuse.
  for start, piece in zip(starts, itertools.chain(
      [batch(starts[0])], threads.in_order(batch, starts[1:], workers))):
    pieces.append(piece)
    if on_progress is not None:
      on_progress(min(start + batch_size, num_trials), num_trials)

  def joined(name, kind):
    return kind(*(np.concatenate([p[name][f] for p in pieces])
                  for f in range(len(kind._fields))))

  return ({m.name: joined(m.name, TrialMetrics) for m in methods},
          joined("pool", PoolPoints))
