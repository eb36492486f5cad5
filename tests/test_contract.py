"""The functional contract, for every public numerical function.

Each function works eagerly; inside a user's ``jax.jit`` with its arrays
passed or closed over (closed-over JAX arrays are concrete, and a value
check there would break the trace); under ``jax.vmap`` over each argument
where batching makes sense (lambdas, costs, Psi, weights, pool masks, keys,
memberships); with ``jax_enable_x64`` on or off; without retracing when only
values change; and with no transfer at all once traced
(``jax.transfer_guard("disallow")`` on device-resident inputs).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from conftest import no_retrace
import uniroute_jax as ur
from uniroute_jax import learn, protocol

RNG = np.random.default_rng(0)
N, D, K, M = 24, 4, 3, 4


def _x(n=N, d=D):
  return RNG.normal(size=(n, d)).astype(np.float32)


X, X_TEST = _x(), _x(10)
LOSS = (RNG.random((N, M)) < 0.4).astype(np.float32)
MASK = RNG.random((N, M)) < 0.9
MASK[0] = True
COST = np.array([0.5, 1.0, 2.0, 4.0], np.float32)
PSI = RNG.uniform(0.1, 0.9, (K, M)).astype(np.float32)
CLUSTERS = RNG.integers(0, K, N).astype(np.int32)
SOFT = RNG.dirichlet(np.ones(K), N).astype(np.float32)
GAMMA = RNG.random((N, M)).astype(np.float32)
LAMBDAS = np.array([0.0, 0.05, 0.2], np.float32)
POOL = np.array([True, True, False, True])
WEIGHTS = RNG.uniform(0.5, 1.5, N).astype(np.float32)
CENTROIDS = X[:K].copy()
KEY = jax.random.key_data(jax.random.key(0))

# A tiny pool: its thin clusters are the point of no test here.
_ROUTER = ur.Router(centroids=CENTROIDS).add_models(
    ["a", "b", "c", "d"], X, LOSS, COST, mask=MASK, warn_below=None)
_FITTED_MAP = ur.fit_cluster_map(jax.random.key(1), X, LOSS, PSI, mask=MASK,
                                 hidden=(), batch_norm=False, epochs=1,
                                 batch_size=8)
_SELECT = jax.device_put(learn.CheckpointSelection(
    X[:12], LOSS[:12, :2], COST[:2], np.array([0, 2], np.int32), MASK[:12, :2]))
_LEARNED_ROUTER = ur.Router.from_cluster_map(_FITTED_MAP).add_psi(
    ["a", "b", "c", "d"], PSI, COST)
_REP_ROUTER = _ROUTER.with_representatives(X)
# A router's own Psi prior is host metadata: adding under it moves nothing.
_SHRINKING_ROUTER = _ROUTER.with_psi_prior(2.0)


def _key(raw):
  return jax.random.wrap_key_data(raw)


@dataclasses.dataclass(frozen=True)
class Case:
  """A public function called on arrays, with the arguments it batches.

  ``fn`` takes the arrays of ``make()`` positionally (everything static is
  bound inside); ``vary[i]`` turns argument i into another valid value of
  the same shape (for vmap and the no-retrace check).
  """

  name: str
  fn: Callable
  make: Callable
  vary: dict = dataclasses.field(default_factory=dict)
  rtol: float = 1e-5
  covers: tuple = ()   # other public functions the case calls


def _lam(a):
  return a * 2 + 0.01


def _cost(a):
  return a[::-1].copy() * 1.5


def _flip(a):
  return ~a if a.dtype == bool else a[::-1].copy()


CASES = [
    Case("kmeans", lambda key, x, w: ur.kmeans(_key(key), x, num_clusters=K,
                                               weights=w, max_iter=20),
         lambda: (KEY, X, WEIGHTS),
         {0: lambda k: jax.random.key_data(jax.random.key(7)), 1: lambda x: x * 2,
          2: lambda w: w[::-1].copy()}),
    Case("kmeans_padded", lambda key, x, active: ur.kmeans(
        _key(key), x, num_clusters=K + 2, active_clusters=active, max_iter=20),
         lambda: (KEY, X, np.int32(2)), {2: lambda a: np.int32(3)}),
    # From given centroids, without a key (none is needed, none is moved).
    Case("kmeans_from_centroids", lambda x, c: ur.kmeans(None, x, init=c,
                                                         max_iter=20),
         lambda: (X, CENTROIDS), {0: lambda x: x * 2, 1: lambda c: c[::-1].copy()}),
    Case("kmeans_plusplus", lambda key, x: ur.kmeans_plusplus(
        _key(key), x, num_clusters=K), lambda: (KEY, X),
         {0: lambda k: jax.random.key_data(jax.random.key(7))}),
    Case("assign_clusters", lambda x, c: ur.assign_clusters(x, c),
         lambda: (X, CENTROIDS), {0: lambda x: x + 1, 1: lambda c: c[::-1].copy()}),
    Case("cluster_errors_hard", lambda c, loss, mask, w, a: ur.cluster_errors(
        c, loss, num_clusters=K, mask=mask, weights=w, prior_strength=a),
         lambda: (CLUSTERS, LOSS, MASK, WEIGHTS, np.float32(1.0)),
         {0: _flip, 1: lambda l: 1 - l, 2: lambda m: m[::-1].copy(),
          3: lambda w: w * 2, 4: lambda a: a + 1}),
    Case("cluster_errors_soft", lambda phi, loss: ur.cluster_errors(phi, loss),
         lambda: (SOFT, LOSS), {0: lambda p: p[::-1].copy(), 1: lambda l: 1 - l}),
    Case("cluster_posterior", lambda c, loss, mask, w: ur.cluster_posterior(
        c, loss, num_clusters=K, mask=mask, weights=w),
         lambda: (CLUSTERS, LOSS, MASK, WEIGHTS),
         {0: _flip, 1: lambda l: 1 - l, 2: lambda m: m[::-1].copy(),
          3: lambda w: w * 2}),
    Case("cluster_posterior_quantile", lambda phi, loss, a, q: ur.cluster_posterior(
        phi, loss, prior_strength=a).quantile(q),
         lambda: (SOFT, LOSS, np.float32(2.0), np.float32(0.8)),
         {0: lambda p: p[::-1].copy(), 2: lambda a: a * 3, 3: lambda q: q / 2}),
    # The default level is a constant of the program, not a host value.
    Case("cluster_posterior_interval", lambda c, loss, a: ur.cluster_posterior(
        c, loss, num_clusters=K, prior_strength=a).interval(),
         lambda: (CLUSTERS, LOSS, np.float32(1.0)),
         {0: _flip, 1: lambda l: 1 - l, 2: lambda a: a * 3}),
    Case("beta_quantile", lambda a, b, q: ur.beta_quantile(a, b, q),
         lambda: (PSI * 10, (1 - PSI) * 10, np.float32(0.3)),
         {0: lambda a: a + 1, 1: lambda b: b * 2, 2: lambda q: q * 2}),
    Case("labelling_ranks", lambda key, c, spread: ur.labelling_ranks(
        _key(key), c, num_clusters=K, selection="neyman", spread=spread),
         lambda: (KEY, CLUSTERS, np.array([0.5, 0.2, 0.3], np.float32)),
         {0: lambda k: jax.random.key_data(jax.random.key(7)), 1: _flip,
          2: lambda s: s[::-1].copy()}),
    Case("predicted_loss", lambda phi, psi: ur.predicted_loss(phi, psi),
         lambda: (SOFT, PSI), {0: lambda p: p[::-1].copy(), 1: lambda p: 1 - p}),
    Case("route_hard", lambda c, psi, cost, lam, pool: ur.route(
        c, psi, cost, lam, pool_mask=pool).choice,
         lambda: (CLUSTERS, PSI, COST, LAMBDAS, POOL),
         {0: _flip, 1: lambda p: 1 - p, 2: _cost, 3: _lam, 4: _flip}),
    Case("route_soft_per_prompt_cost", lambda phi, psi, cost, lam: ur.route(
        phi, psi, cost, lam).choice,
         lambda: (SOFT, PSI, np.tile(COST, (N, 1)), np.float32(0.1)),
         {0: lambda p: p[::-1].copy(), 2: lambda c: c * 2, 3: _lam}),
    Case("choose_models", lambda g, cost, lam, pool: ur.choose_models(
        g, cost, lam, pool_mask=pool), lambda: (GAMMA, COST, LAMBDAS, POOL),
         {0: lambda g: 1 - g, 1: _cost, 2: _lam, 3: _flip}),
    Case("switch_path", lambda g, cost, pool: ur.switch_path(g, cost, pool_mask=pool),
         lambda: (GAMMA, COST, POOL), {0: lambda g: 1 - g, 1: _cost, 2: _flip}),
    Case("deferral_curve", lambda g, t, cost, pool, w: ur.deferral_curve(
        g, t, cost, pool_mask=pool, weights=w),
         lambda: (GAMMA, LOSS, COST, POOL, WEIGHTS),
         {0: lambda g: 1 - g, 1: lambda t: 1 - t, 2: _cost, 3: _flip,
          4: lambda w: w[::-1].copy()}),
    Case("deferral_metrics", lambda g, t, cost, w: ur.deferral_metrics(
        ur.deferral_curve(g, t, cost, weights=w)),
         lambda: (GAMMA, LOSS, COST, WEIGHTS),
         {0: lambda g: 1 - g, 3: lambda w: w[::-1].copy()}),
    Case("upper_envelope", lambda c, q, top, best: ur.upper_envelope(
        ur.curve_from_points(c, q, max_cost=top, best_quality=best)),
         lambda: (COST, np.array([0.3, 0.5, 0.4, 0.8], np.float32),
                  np.float32(4.0), np.float32(0.8)),
         {0: _cost, 1: lambda q: q[::-1].copy(), 2: lambda t: t * 2},
         covers=("curve_from_points",)),
    Case("labelled_area", lambda g, loss, mask, cost: ur.labelled_area(
        g, loss, mask, cost), lambda: (GAMMA, LOSS, MASK, COST),
         {0: lambda g: 1 - g, 2: lambda m: m[::-1].copy(), 3: _cost}),
    Case("zero_router_curve", lambda loss, cost, pool, truth: ur.zero_router_curve(
        ur.zero_router_hull(loss, cost, pool_mask=pool), truth, cost,
        pool_mask=pool), lambda: (LOSS.mean(0), COST, POOL, LOSS),
         {0: lambda l: 1 - l, 1: _cost, 2: _flip}, covers=("zero_router_hull",)),
    Case("zero_router_route", lambda key, loss, cost, budget: ur.zero_router_route(
        _key(key), ur.zero_router_hull(loss, cost), budget, num_prompts=N),
         lambda: (KEY, LOSS.mean(0), COST, np.float32(1.5)),
         {0: lambda k: jax.random.key_data(jax.random.key(3)),
          3: lambda b: b * 2}),
    Case("knn_predicted_loss", lambda q, r, loss, mask: ur.knn_predicted_loss(
        q, r, loss, num_neighbors=5, mask=mask), lambda: (X_TEST, X, LOSS, MASK),
         {0: lambda q: q * 2, 2: lambda l: 1 - l, 3: lambda m: m[::-1].copy()}),
    Case("knn_predicted_loss_grid", lambda q, r, loss, ks: ur.knn_predicted_loss_grid(
        q, r, loss, num_neighbors=ks, max_neighbors=9),
         lambda: (X_TEST, X, LOSS, np.array([1, 5, 9], np.int32)),
         {2: lambda l: 1 - l, 3: lambda k: k[::-1].copy()}),
    Case("neighbor_lists", lambda x, rows: ur.neighbor_lists(
        x, length=6, rows=rows), lambda: (X, np.arange(12, dtype=np.int32)),
         {0: lambda x: x * 2 + 1, 1: lambda r: r[::-1].copy()}),
    Case("knn_predicted_loss_grid_from_lists",
         lambda lists, loss, mask, ks: ur.knn_predicted_loss_grid_from_lists(
             lists, loss, mask=mask, num_neighbors=ks, max_neighbors=5),
         lambda: (RNG.integers(-1, N, (10, 12)).astype(np.int32), LOSS, MASK,
                  np.array([1, 3, 5], np.int32)),
         {0: lambda l: l[::-1].copy(), 1: lambda l: 1 - l,
          2: lambda m: m[::-1].copy(), 3: lambda k: k[::-1].copy()}),
    Case("cluster_map_loss", lambda phi, psi, e, mask: ur.cluster_map_loss(
        phi, psi, e, mask), lambda: (SOFT, PSI, LOSS, MASK),
         {0: lambda p: p[::-1].copy(), 1: lambda p: 1 - p, 3: lambda m: m[::-1].copy()}),
    Case("fit_cluster_map", lambda key, x, e, psi, lr, cmask: ur.fit_cluster_map(
        _key(key), x, e, psi, cluster_mask=cmask, hidden=(3,), epochs=1,
        batch_size=8, learning_rate=lr, select=_SELECT),
         lambda: (KEY, X, LOSS, PSI, np.float32(0.01), np.array([1, 1, 0], bool)),
         {0: lambda k: jax.random.key_data(jax.random.key(5)),
          4: lambda lr: lr * 2}, rtol=1e-4),
    Case("apply_cluster_map", lambda x: ur.apply_cluster_map(_FITTED_MAP, x),
         lambda: (X,), {0: lambda x: x * 2}),
    Case("learned_map_predicted_loss", lambda x, psi: ur.learned_map_predicted_loss(
        _FITTED_MAP, x, psi), lambda: (X, PSI), {1: lambda p: 1 - p}),
    Case("fit_mlp", lambda key, x, e, mask: ur.predict_loss(ur.fit_mlp(
        _key(key), x, e, mask=mask, hidden=(3,), epochs=1, batch_size=8), x),
         lambda: (KEY, X, LOSS, MASK),
         {0: lambda k: jax.random.key_data(jax.random.key(5)), 2: lambda e: 1 - e},
         rtol=1e-4, covers=("predict_loss",)),
    Case("fit_matrix_factorization", lambda key, x, e, rank: ur.predict_loss(
        ur.fit_matrix_factorization(_key(key), x, e, rank=3, active_rank=rank,
                                    epochs=1, batch_size=8, select=_SELECT), x),
         lambda: (KEY, X, LOSS, np.int32(2)),
         {0: lambda k: jax.random.key_data(jax.random.key(5)),
          3: lambda r: np.int32(3)}, rtol=1e-4),
    Case("predictor_loss", lambda logits, e: ur.baselines.predictor_loss(logits, e),
         lambda: (GAMMA, LOSS), {0: lambda g: g * 3, 1: lambda e: 1 - e}),
    Case("Router.route", lambda x, lam: _ROUTER.route(x, lam).choice,
         lambda: (X_TEST, LAMBDAS), {0: lambda x: x * 2, 1: _lam}),
    Case("Router.route_subset", lambda x, lam: _ROUTER.route(
        x, lam, models=["a", "d"]).choice, lambda: (X_TEST, np.float32(0.1)),
         {1: _lam}),
    Case("Router.predicted_loss", lambda x: _ROUTER.predicted_loss(x),
         lambda: (X_TEST,), {0: lambda x: x * 2}),
    Case("Router.add_models", lambda x, loss, cost: _ROUTER.add_models(
        ["e"], x, loss, cost).psi, lambda: (X, LOSS[:, :1], COST[:1]),
         {1: lambda l: 1 - l, 2: lambda c: c * 2}),
    Case("Router.add_models_own_prior", lambda x, loss, cost:
         _SHRINKING_ROUTER.add_models(["e"], x, loss, cost, warn_below=None).psi,
         lambda: (X, LOSS[:, :1], COST[:1]),
         {1: lambda l: 1 - l, 2: lambda c: c * 2}),
    Case("LearnedMap Router.route", lambda x, lam: _LEARNED_ROUTER.route(
        x, lam).choice, lambda: (X_TEST, LAMBDAS), {0: lambda x: x * 2, 1: _lam}),
    Case("Router.onboard", lambda loss, cost: _REP_ROUTER.onboard(
        ["e"], loss, cost).psi, lambda: (LOSS[:, :1], COST[:1]),
         {0: lambda l: 1 - l, 1: lambda c: c * 2}),
    Case("operating_point", lambda g, cost, budget, pool: ur.operating_point(
        g, cost, max_cost=budget, pool_mask=pool),
         lambda: (GAMMA, COST, np.float32(1.2), POOL),
         {0: lambda g: 1 - g, 1: _cost, 2: lambda b: b * 0.5, 3: _flip}),
    Case("excess_risk", lambda g, loss, cost, lam, mask, pool, w: ur.excess_risk(
        g, loss, cost, lam, mask=mask, pool_mask=pool, weights=w),
         lambda: (GAMMA, LOSS, COST, LAMBDAS, MASK, POOL, WEIGHTS),
         {0: lambda g: 1 - g, 1: lambda l: 1 - l, 2: _cost, 3: _lam,
          4: lambda m: m[::-1].copy(), 5: _flip, 6: lambda w: w * 2}),
    Case("excess_decomposition", lambda c, psi, loss, cost, lam, pool:
         ur.excess_decomposition(c, psi, loss, cost, lam, pool_mask=pool),
         lambda: (CLUSTERS, PSI, LOSS, COST, LAMBDAS, POOL),
         {0: _flip, 1: lambda p: 1 - p, 2: lambda l: 1 - l, 3: _cost, 4: _lam,
          5: _flip}),
    Case("area_decomposition", lambda phi, psi, loss, cost, rc:
         ur.area_decomposition(phi, psi, loss, cost,
                               routing_cost=rc),
         lambda: (SOFT, PSI, LOSS, COST, COST * 1.5),
         {0: lambda p: p[::-1].copy(), 1: lambda p: 1 - p, 3: _cost, 4: _cost}),
    Case("impurity_bound", lambda c, eta, pool, w: ur.impurity_bound(
        c, eta, num_clusters=K, pool_mask=pool, weights=w),
         lambda: (CLUSTERS, GAMMA, POOL, WEIGHTS),
         {0: _flip, 1: lambda g: 1 - g, 2: _flip, 3: lambda w: w[::-1].copy()}),
    Case("neighborhood_error", lambda x, c, loss, mask, w: ur.neighborhood_error(
        x, loss, membership=c, num_neighbors=4, mask=mask, weights=w),
         lambda: (X, CLUSTERS, LOSS, MASK, WEIGHTS),
         {0: lambda x: x * 2 + 1, 1: _flip, 2: lambda l: 1 - l,
          3: lambda m: m[::-1].copy(), 4: lambda w: w[::-1].copy()}),
    Case("impurity_bounds", lambda key, x, loss, ks: ur.impurity_bounds(
        _key(key), x, loss, ks, max_clusters=K, num_neighbors=4, max_iter=20),
         lambda: (KEY, X, LOSS, np.array([1, 2, 3], np.int32)),
         {0: lambda k: jax.random.key_data(jax.random.key(7)),
          2: lambda l: 1 - l, 3: lambda k: k[::-1].copy()}),
    Case("operating_point_quality", lambda g, cost, target: ur.operating_point(
        g, cost, min_quality=target),
         lambda: (GAMMA, COST, np.float32(0.5)),
         {0: lambda g: 1 - g, 2: lambda q: q * 0.8}),
]
IDS = [c.name for c in CASES]


def _close(a, b, rtol):
  chex.assert_trees_all_close(a, b, rtol=rtol, atol=rtol)


def _device(args):
  return tuple(jax.device_put(a) for a in args)


class EagerAndJitTest(parameterized.TestCase):
  """chex variants: the public function called directly, and inside a
  user's ``jax.jit`` with every array passed as an argument."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*[(c.name, c) for c in CASES])
  def test_variants_agree(self, case):
    args = case.make()
    expected = case.fn(*args)
    _close(self.variant(case.fn)(*args), expected, case.rtol)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jit_with_arrays_closed_over(case):
  """Closed-over JAX arrays are concrete inside the trace: nothing may
  inspect their values there."""
  args = _device(case.make())
  expected = case.fn(*args)
  _close(jax.jit(lambda: case.fn(*args))(), expected, case.rtol)
  if len(args) > 1:
    first = jax.jit(lambda a: case.fn(a, *args[1:]))
    _close(first(args[0]), expected, case.rtol)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vmap_over_each_batched_argument(case):
  args = case.make()
  for index, vary in case.vary.items():
    values = [args[index], vary(args[index])]
    batched = jax.vmap(lambda a, i=index: case.fn(*args[:i], a, *args[i + 1:]))(
        jnp.stack([jnp.asarray(v) for v in values]))
    for b, value in enumerate(values):
      one = case.fn(*args[:index], value, *args[index + 1:])
      _close(jax.tree.map(lambda leaf, b=b: leaf[b], batched), one, case.rtol)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_no_retrace_when_only_values_change(case):
  args = case.make()
  case.fn(*args)
  changed = tuple(case.vary[i](a) if i in case.vary else a
                  for i, a in enumerate(args))
  with no_retrace():
    case.fn(*changed)
  traced = jax.jit(chex.assert_max_traces(case.fn, n=1))
  traced(*args)
  traced(*changed)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_no_transfer_once_traced(case):
  """On device-resident inputs a call moves nothing between host and
  device: no value check, no host-side default, no implicit copy."""
  args = _device(case.make())
  jax.block_until_ready(case.fn(*args))
  with jax.transfer_guard("disallow"):
    jax.block_until_ready(case.fn(*args))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_x64_off(case):
  """With float64 disabled (JAX's default) the same float32 computation
  runs; integer outputs come out as int32."""
  args = case.make()
  expected = case.fn(*args)
  with jax.enable_x64(False):
    out = case.fn(*args)
    for leaf in jax.tree.leaves(out):
      assert jnp.dtype(leaf.dtype).itemsize <= 4 or leaf.dtype == bool, leaf.dtype
  _close(jax.tree.map(np.asarray, out),
         jax.tree.map(lambda a: np.asarray(a).astype(
             np.int32 if np.issubdtype(np.asarray(a).dtype, np.integer) else
             np.asarray(a).dtype), expected), case.rtol)


# Public functions that are not numerical kernels: host-side boundaries.
_BOUNDARY = {"checked", "evaluate", "load_embedllm", "load_embeddings",
             "load_long", "load_routerbench", "make_synthetic", "missing_labels",
             "read_prompts", "fit_router"}


# Scalar arguments called with a float and then with the same integer value.
_SAME_VALUE_CALLS = {
    "route": lambda v: ur.route(CLUSTERS, PSI, COST, v).choice,
    "route_list": lambda v: ur.route(CLUSTERS, PSI, COST, [0, v]).choice,
    "Router.route": lambda v: _ROUTER.route(X_TEST, v).choice,
    "choose_models": lambda v: ur.choose_models(GAMMA, COST, v),
    "excess_risk": lambda v: ur.excess_risk(GAMMA, LOSS, COST, v),
    "operating_point": lambda v: ur.operating_point(GAMMA, COST, max_cost=v),
    "cluster_errors": lambda v: ur.cluster_errors(
        CLUSTERS, LOSS, num_clusters=K, prior_strength=v).psi,
    "Router.add_models": lambda v: _ROUTER.add_models(
        ["e"], X, LOSS[:, :1], COST[:1], prior_strength=v, warn_below=None).psi,
    "cluster_posterior_interval": lambda v: ur.cluster_posterior(
        CLUSTERS, LOSS, num_clusters=K).interval(v),
    "beta_quantile": lambda v: ur.beta_quantile(PSI, 1 - PSI, v),
    "curve_from_points": lambda v: ur.curve_from_points(
        COST, np.array([0.3, 0.5, 0.4, 0.8], np.float32), max_cost=4 * v,
        best_quality=v),
    "deferral_metrics": lambda v: ur.deferral_metrics(
        ur.deferral_curve(GAMMA, LOSS, COST), rtol=v - 1),
    "zero_router_route": lambda v: ur.zero_router_route(
        jax.random.key(0), ur.zero_router_hull(LOSS.mean(0), COST), v,
        num_prompts=N),
    "kmeans": lambda v: ur.kmeans(jax.random.key(0), X, num_clusters=K,
                                  tol=v - 1, max_iter=5),
    "cluster_map_loss": lambda v: ur.cluster_map_loss(SOFT, PSI, LOSS,
                                                      eps=v - 1),
    "fit_mlp": lambda v: ur.predict_loss(ur.fit_mlp(
        jax.random.key(0), X, LOSS, hidden=(3,), epochs=1, batch_size=8,
        learning_rate=v / 100), X),
}


@pytest.mark.parametrize("name", sorted(_SAME_VALUE_CALLS))
def test_an_integer_scalar_is_the_float_of_its_value(name):
  """1 and 1.0 are one value to the user: one result and one trace."""
  call = _SAME_VALUE_CALLS[name]
  expected = call(1.0)
  with no_retrace():
    _close(call(1), expected, 0)


_NAN_GAMMA = np.array([[0.1, np.nan], [0.2, 0.3]], np.float32)
_TWO_COSTS = np.array([1.0, 2.0], np.float32)


@pytest.mark.parametrize("call, message", [
    (lambda: ur.switch_path(_NAN_GAMMA, _TWO_COSTS),
     "switch_path: predicted_loss must be finite"),
    (lambda: ur.operating_point(_NAN_GAMMA, _TWO_COSTS, max_cost=1.5),
     "operating_point: predicted_loss must be finite"),
    (lambda: ur.operating_point(_NAN_GAMMA[1:], -_TWO_COSTS, max_cost=1.5),
     "operating_point: cost must be finite and non-negative"),
    (lambda: ur.deferral_curve(_NAN_GAMMA, np.ones((2, 2)), _TWO_COSTS),
     "deferral_curve: predicted_loss must be finite"),
    (lambda: ur.deferral_curve(_NAN_GAMMA[1:], np.ones((1, 2)), _TWO_COSTS,
                               routing_cost=-_TWO_COSTS),
     "deferral_curve: routing_cost must be finite and non-negative"),
    (lambda: ur.zero_router_hull(_NAN_GAMMA[0], _TWO_COSTS),
     "zero_router_hull: mean_loss must be finite"),
], ids=["switch_path", "operating_point", "operating_point_cost",
        "deferral_curve", "deferral_curve_routing_cost", "zero_router_hull"])
def test_a_failed_value_check_names_the_function_called(call, message):
  """Under ``checked``, a function built on another names itself and its
  own argument, not the function it calls."""
  with pytest.raises(ValueError, match=f"^{message}$"):
    ur.checked(lambda: call())()


def test_a_numpy_integer_neighbour_count_is_traced():
  """np.int32(k) is an array to JAX, so it is traced here too: a new k is
  not a new program."""
  call = lambda k: ur.knn_predicted_loss(X_TEST, X, LOSS, num_neighbors=k)
  call(np.int32(3))
  with no_retrace():
    got = call(np.int32(5))
  _close(got, call(5), 0)


def test_every_public_numerical_function_has_a_case():
  """A new public function joins this table (or the boundary list)."""
  import inspect
  functions = {name for name in ur.__all__
               if inspect.isfunction(getattr(ur, name))} - _BOUNDARY
  covered = set()
  for case in CASES:
    covered.add(case.name.split(".")[0] if "." in case.name else case.name)
    covered.update(case.covers)
  covered |= {name.rsplit("_", 1)[0] for name in covered}
  assert functions <= covered, sorted(functions - covered)
  for method in ("route", "predicted_loss", "add_models"):
    assert f"Router.{method}" in IDS


def test_router_route_passed_through_the_users_jit():
  """The router itself as a jit argument: a pytree of arrays."""
  fn = jax.jit(lambda r, x, lam: r.route(x, lam, models=["a", "b"]).choice)
  np.testing.assert_array_equal(
      fn(_ROUTER, X_TEST, LAMBDAS), _ROUTER.route(X_TEST, LAMBDAS,
                                                  models=["a", "b"]).choice)


@pytest.mark.slow
def test_protocol_search_runs_under_the_users_jit():
  """A method's trial run is a pure function too."""
  data = ur.make_synthetic(jax.random.key(0), num_prompts=200, num_models=5,
                           dim=6)
  split = protocol.make_split(jax.random.key(1), 200, 5)
  method = protocol.KMeansRouter(clusters=(2, 3), max_iter=3).resolve(120, 20)
  trial = protocol.gather_trial(protocol.dataset_arrays(data), split)
  eager = method.run(trial, jax.random.key(2))
  jitted = jax.jit(lambda t, m: m.run(t, jax.random.key(2)))(trial, method)
  _close(jitted, eager, 1e-6)


def test_no_module_reaches_into_another_modules_private_names():
  """What one module needs of another is public and documented: no
  ``module._name`` (or ``package.module._name``) access and no
  ``from module import _name`` across modules. NamedTuple's own methods
  (``_replace``, ``_asdict``, ...) are public API."""
  import ast
  import importlib
  import pathlib
  import types
  namedtuple_api = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}
  root = pathlib.Path(ur.__file__).parent

  def absolute(node, path):
    if not node.level:
      return node.module or ""
    package = ["uniroute_jax", *path.relative_to(root).parent.parts]
    package = package[:len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))

  offenders = []
  for path in sorted(root.rglob("*.py")):
    tree = ast.parse(path.read_text(), filename=str(path))
    modules = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        for a in node.names:
          if a.name.startswith("uniroute_jax"):
            modules.add((a.asname or a.name).split(".")[0])
            if any(p.startswith("_") and not p.startswith("__")
                   for p in a.name.split(".")):
              offenders.append(f"{path.name}:{node.lineno} imports {a.name}")
      elif isinstance(node, ast.ImportFrom):
        source = absolute(node, path)
        if not source.startswith("uniroute_jax"):
          continue
        for a in node.names:
          if isinstance(getattr(importlib.import_module(source), a.name, None),
                        types.ModuleType):
            modules.add(a.asname or a.name)
          if a.name.startswith("_") and not a.name.startswith("__"):
            offenders.append(f"{path.name}:{node.lineno} imports {a.name} "
                             f"from {source}")
    for node in ast.walk(tree):
      if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
              and not node.attr.startswith("__")
              and node.attr not in namedtuple_api):
        continue
      base = node.value
      while isinstance(base, ast.Attribute):
        base = base.value
      if isinstance(base, ast.Name) and base.id in modules:
        offenders.append(f"{path.name}:{node.lineno} reads {ast.unparse(node)}")
  assert not offenders, offenders


@pytest.mark.parametrize("call, message", [
    (lambda: ur.checks.positive_int("num_clusters", np.float64(2.5)),
     "num_clusters must be a positive integer, got 2.5"),
    (lambda: ur.checks.host_nonnegative("cost", np.float32([1, -2])),
     "cost must be non-negative, found -2.0"),
    (lambda: ur.checks.host_in_range("psi", np.float32([0.5, 1.5]), 0.0, 1.0),
     "psi must lie in [0.0, 1.0], found 1.5"),
    (lambda: ur.features.prior_rule(np.bool_(True), "prior_strength"),
     "prior_strength must be None, a non-negative number or "
     "'empirical_bayes', got True"),
    (lambda: protocol.sign_test(np.ones(3), np.ones(3),
                                tie_tolerance=np.float32(-1)),
     "tie_tolerance must be non-negative, got -1.0"),
])
def test_messages_show_values_not_numpy_reprs(call, message):
  """A value from the user's NumPy arrays reads as the number it is, not
  as ``np.float32(-2.0)``."""
  with pytest.raises(ValueError) as raised:
    call()
  assert str(raised.value) == message


def test_numpy_names_and_numbers_are_taken_as_python_ones():
  """Names from a NumPy array are kept as str (the pool, the repr and every
  message list 'a', not np.str_('a')); a NumPy momentum is a number."""
  key = jax.random.key(0)
  x = np.asarray(jax.random.normal(key, (40, 3)), np.float32)
  loss = (x[:, :3] > 0).astype(np.float32)
  router = ur.Router.from_kmeans(key, x, num_clusters=2).add_models(
      np.array(["a", "b", "c"]), x, loss, [1., 2., 3.], warn_below=None)
  assert router.models == ("a", "b", "c")
  assert all(type(name) is str for name in router.models)
  assert "np.str_" not in repr(router)
  with pytest.raises(ValueError, match=r"\['a'\] already in the pool"):
    router.add_models(np.array(["a"]), x, loss[:, :1], [1.], warn_below=None)
  with pytest.raises(ValueError, match=r"\['zz'\] not in the pool \['a', "):
    router.remove_models(np.array(["zz"]))
  psi = np.array([[0.2, 0.4, 0.6], [0.8, 0.6, 0.4]], np.float32)
  ours = ur.fit_cluster_map(key, x, loss, psi, hidden=(4,), batch_size=8,
                            epochs=1, momentum=np.float32(0.5))
  python = ur.fit_cluster_map(key, x, loss, psi, hidden=(4,), batch_size=8,
                              epochs=1, momentum=0.5)
  chex.assert_trees_all_close(ours, python)
  with pytest.raises(ValueError, match=r"in \[0, 1\), got 1\.5$"):
    ur.fit_cluster_map(key, x, loss, psi, momentum=np.float64(1.5))
