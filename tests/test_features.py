"""Per-cluster error vectors Psi against a NumPy loop."""

import jax
import numpy as np
import pytest

from conftest import RTOL, no_retrace
from uniroute_jax import checked, cluster_errors
from uniroute_jax import features, routing


def numpy_psi(cluster, loss, mask, weights, k, prior):
  n, m = loss.shape
  psi, counts = np.zeros((k, m)), np.zeros((k, m))
  overall = np.zeros(m)
  for j in range(m):
    s = c = 0.0
    for i in range(n):
      if mask[i, j]:
        s += weights[i] * loss[i, j]
        c += weights[i]
    overall[j] = s / c
  for j in range(m):
    for g in range(k):
      s = c = 0.0
      for i in range(n):
        if cluster[i] == g and mask[i, j]:
          s += weights[i] * loss[i, j]
          c += weights[i]
      counts[g, j] = c
      psi[g, j] = (s + prior * overall[j]) / (c + prior) if c + prior > 0 else overall[j]
  return psi, counts, overall


def problem(n=60, m=5, k=6, seed=0, dtype=np.float64):
  rng = np.random.default_rng(seed)
  cluster = rng.integers(0, k - 1, size=n)  # cluster k-1 stays empty
  # A mix of 0/1 errors and graded scores.
  loss = np.where(rng.random((n, m)) < 0.5, rng.integers(0, 2, (n, m)),
                  rng.random((n, m))).astype(dtype)
  mask = rng.random((n, m)) < 0.8
  mask[0] = True
  weights = rng.uniform(0.2, 2.0, size=n).astype(dtype)
  return cluster, loss, mask, weights


@pytest.mark.parametrize("prior", [0.0, 2.5])
def test_matches_numpy_loop(dtype, mode, prior):
  cluster, loss, mask, weights = problem(dtype=dtype)
  out = cluster_errors(cluster, loss, num_clusters=6, mask=mask,
                       weights=weights, prior_strength=prior)
  psi, counts, overall = numpy_psi(cluster, loss, mask, weights, 6, prior)
  rtol = RTOL[dtype] * 10
  np.testing.assert_allclose(np.asarray(out.psi), psi, rtol=rtol)
  np.testing.assert_allclose(np.asarray(out.counts), counts, rtol=rtol)
  np.testing.assert_allclose(np.asarray(out.overall), overall, rtol=rtol)
  assert out.psi.dtype == dtype


def test_empty_cluster_gets_the_overall_error():
  cluster, loss, mask, _ = problem()
  out = cluster_errors(cluster, loss, num_clusters=6, mask=mask)
  np.testing.assert_array_equal(np.asarray(out.counts[5]), 0.0)
  np.testing.assert_allclose(np.asarray(out.psi[5]), np.asarray(out.overall))


def test_soft_one_hot_equals_hard():
  cluster, loss, mask, weights = problem()
  hard = cluster_errors(cluster, loss, num_clusters=6, mask=mask, weights=weights)
  soft = cluster_errors(np.eye(6)[cluster], loss, mask=mask, weights=weights)
  for a, b in zip(hard, soft):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_membership_matrix_against_a_loop(dtype):
  with jax.enable_x64(dtype == "float64"):
    ids = np.array([0, 2, -1, 3, 1, 7])
    expected = np.zeros((6, 4))
    for i, c in enumerate(ids):
      if 0 <= c < 4:
        expected[i, c] = 1.0
    for fn in (features.membership_matrix, jax.jit(
        features.membership_matrix, static_argnums=(1, 2))):
      hard = fn(jax.numpy.asarray(ids), 4, dtype)
      assert hard.dtype == dtype
      np.testing.assert_array_equal(np.asarray(hard), expected)
    np.testing.assert_array_equal(
        np.asarray(routing.known_cluster(jax.numpy.asarray(ids), 4)),
        expected.sum(axis=1) == 1)
    soft = np.random.default_rng(0).dirichlet(np.ones(4), size=5)
    out = features.membership_matrix(jax.numpy.asarray(soft), 4, dtype)
    assert out.dtype == dtype
    np.testing.assert_allclose(np.asarray(out), soft.astype(dtype))


def test_soft_membership_is_a_weighted_mean():
  rng = np.random.default_rng(3)
  phi = rng.dirichlet(np.ones(3), size=40)
  loss = rng.random((40, 4))
  out = cluster_errors(phi, loss)
  expected = (phi.T @ loss) / phi.sum(0)[:, None]
  np.testing.assert_allclose(np.asarray(out.psi), expected, rtol=1e-12)


def test_masking_a_label_equals_removing_it():
  cluster, loss, mask, weights = problem()
  mask[:] = True
  mask[7, 2] = False
  masked = cluster_errors(cluster, loss, num_clusters=6, mask=mask)
  keep = np.arange(len(loss)) != 7
  removed = cluster_errors(cluster[keep], loss[keep], num_clusters=6)
  np.testing.assert_allclose(np.asarray(masked.psi[:, 2]),
                             np.asarray(removed.psi[:, 2]), rtol=1e-12)


def test_invariant_to_prompt_order_and_weight_scale():
  cluster, loss, mask, weights = problem()
  base = cluster_errors(cluster, loss, num_clusters=6, mask=mask, weights=weights)
  perm = np.random.default_rng(5).permutation(len(loss))
  permuted = cluster_errors(cluster[perm], loss[perm], num_clusters=6,
                            mask=mask[perm], weights=3.0 * weights[perm])
  np.testing.assert_allclose(np.asarray(base.psi), np.asarray(permuted.psi),
                             rtol=1e-12)


def test_shrinkage_pulls_tiny_clusters_towards_overall():
  loss = np.array([[0.0], [0.0], [1.0], [1.0], [1.0], [1.0]])
  cluster = np.array([0, 1, 1, 1, 1, 1])
  plain = cluster_errors(cluster, loss, num_clusters=2)
  shrunk = cluster_errors(cluster, loss, num_clusters=2, prior_strength=1.0)
  overall = 4 / 6
  assert float(plain.psi[0, 0]) == 0.0
  np.testing.assert_allclose(float(shrunk.psi[0, 0]), (0 + overall) / 2)
  np.testing.assert_allclose(float(shrunk.psi[1, 0]), (4 + overall) / 6)


def test_traced_inputs_and_no_retrace():
  cluster, loss, mask, weights = problem()
  f = jax.jit(lambda c, l: cluster_errors(c, l, num_clusters=6).psi)
  np.testing.assert_allclose(
      np.asarray(f(cluster, loss)),
      np.asarray(cluster_errors(cluster, loss, num_clusters=6).psi), rtol=1e-12)
  cluster_errors(cluster, loss, num_clusters=6, mask=mask, prior_strength=1.0,
                 weights=weights)
  with no_retrace():
    cluster_errors(cluster, 1 - loss, num_clusters=6, mask=~mask | mask,
                   prior_strength=3.0, weights=2 * weights)


@pytest.mark.parametrize("bad, match", [
    (dict(loss=np.ones((3, 2))), "membership and loss must agree"),
    (dict(num_clusters=None), "num_clusters must be given"),
    (dict(membership=np.array([0.0, 1.0, 1.0, 0.0])), "membership must hold integers"),
    (dict(mask=np.ones((4, 3), bool)), r"mask must have shape \(4, 2\)"),
    (dict(prior_strength=np.ones(2)), "prior_strength must be a numeric 0-d"),
    (dict(loss="x"), "loss must be a numeric 2-d array"),
])
def test_bad_input(bad, match):
  args = dict(membership=np.array([0, 1, 1, 0]), loss=np.full((4, 2), 0.5),
              num_clusters=2)
  args.update(bad)
  with pytest.raises(ValueError, match=match):
    cluster_errors(args.pop("membership"), args.pop("loss"), **args)


@pytest.mark.parametrize("bad, match", [
    (dict(loss=np.full((4, 2), 1.5)), r"loss must lie in \[0, 1\]"),
    (dict(membership=np.array([0, 1, 2, 0])), r"membership must hold cluster indices in \[0, 2\)"),
    (dict(membership=-np.ones((4, 2))), "membership must be non-negative"),
    (dict(prior_strength=-1.0), "prior_strength must be non-negative"),
    (dict(weights=-np.ones(4)), "weights must be non-negative"),
])
def test_bad_values_are_caught_under_checkify(bad, match):
  args = dict(membership=np.array([0, 1, 1, 0]), loss=np.full((4, 2), 0.5),
              num_clusters=2)
  args.update(bad)
  if np.ndim(args["membership"]) == 2:
    args.pop("num_clusters")
  with pytest.raises(ValueError, match=match):
    checked(cluster_errors)(args.pop("membership"), args.pop("loss"), **args)


def test_an_index_outside_the_clusters_puts_its_prompt_in_no_cluster():
  """Its prompt is in no cell, but still one of the LLM's labels: it counts
  in the overall mean, which an empty cluster falls back to."""
  loss = np.array([[0.0], [1.0], [1.0]])
  out = jax.jit(lambda c: cluster_errors(c, loss, num_clusters=3))(
      np.array([0, 5, 1]))
  np.testing.assert_allclose(np.asarray(out.psi)[:, 0], [0.0, 1.0, 2 / 3],
                             rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(out.counts)[:, 0], [1, 1, 0])
  np.testing.assert_allclose(np.asarray(out.overall), [2 / 3], rtol=1e-6)


def test_an_llm_with_no_label_is_assumed_always_wrong():
  """One rule for an LLM without any label, wherever a router meets it
  traced: its mean loss (ZeroRouter's input), its Psi and K-NN's
  prediction are 1."""
  from uniroute_jax.baselines import knn_predicted_loss
  rng = np.random.default_rng(5)
  loss = rng.random((6, 3))
  mask = np.ones((6, 3), bool)
  mask[:, 1] = False
  mask[0, 2] = False
  w = rng.random(6)
  expected = [np.average(loss[:, 0], weights=w), 1.0,
              np.average(loss[1:, 2], weights=w[1:])]
  np.testing.assert_allclose(features.mean_loss(loss, mask, w), expected, rtol=1e-12)
  psi = jax.jit(lambda m: cluster_errors(np.array([0, 1, 0, 1, 0, 1]), loss,
                                         num_clusters=2, mask=m).psi)(mask)
  np.testing.assert_array_equal(np.asarray(psi)[:, 1], [1.0, 1.0])
  out = knn_predicted_loss(rng.normal(size=(4, 2)), rng.normal(size=(6, 2)), loss,
                           num_neighbors=2, mask=mask)
  np.testing.assert_array_equal(np.asarray(out)[:, 1], np.ones(4))


# ------------------------------------------------------- Beta posteriors


def numpy_counts(cluster, loss, mask, weights, k):
  n, m = loss.shape
  counts, sums = np.zeros((k, m)), np.zeros((k, m))
  for i in range(n):
    for j in range(m):
      if mask[i, j]:
        counts[cluster[i], j] += weights[i]
        sums[cluster[i], j] += weights[i] * loss[i, j]
  return counts, sums


def numpy_log_marginal(a, counts, sums, mu):
  from scipy.special import betaln
  mu = min(max(mu, 1e-6), 1 - 1e-6)
  keep = counts > 0
  return float(np.sum(betaln(sums[keep] + a * mu,
                             counts[keep] - sums[keep] + a * (1 - mu))
                      - betaln(a * mu, a * (1 - mu))))


def test_posterior_with_a_fixed_strength_is_the_shrinkage_estimate(dtype, mode):
  rng = np.random.default_rng(0)
  n, m, k = 60, 4, 5
  cluster = rng.integers(0, k, n)
  loss = (rng.random((n, m)) < 0.3).astype(dtype)
  mask = rng.random((n, m)) < 0.8
  post = features.cluster_posterior(cluster, loss, num_clusters=k, mask=mask,
                                    prior_strength=3.0)
  errors = cluster_errors(cluster, loss, num_clusters=k, mask=mask,
                          prior_strength=3.0)
  np.testing.assert_allclose(post.mean, errors.psi, rtol=RTOL[dtype])
  np.testing.assert_allclose(post.overall, errors.overall, rtol=RTOL[dtype])
  counts, sums = numpy_counts(cluster, loss, mask, np.ones(n), k)
  mu = sums.sum(0) / counts.sum(0)
  np.testing.assert_allclose(post.alpha, sums + 3.0 * mu, rtol=RTOL[dtype])
  np.testing.assert_allclose(post.beta, counts - sums + 3.0 * (1 - mu),
                             rtol=RTOL[dtype], atol=RTOL[dtype])
  assert post.mean.dtype == dtype


def test_posterior_counts_weights_as_effective_prompts():
  """Only the weights' relative sizes matter: rescaling them changes
  nothing, and weights of 2 and 0 are the prompts of weight 2 once."""
  rng = np.random.default_rng(8)
  n, k = 90, 6
  cluster = rng.integers(0, k, n)
  rates = rng.beta(2, 2, (k, 2))
  loss = (rng.random((n, 2)) < rates[cluster]).astype(float)
  w = rng.uniform(0.5, 2.0, n)
  base = features.cluster_posterior(cluster, loss, num_clusters=k, weights=w)
  for scale in (0.01, 100.0):
    scaled = features.cluster_posterior(cluster, loss, num_clusters=k,
                                        weights=w * scale)
    np.testing.assert_allclose(scaled.mean, base.mean, rtol=1e-9)
    np.testing.assert_allclose(scaled.prior_strength, base.prior_strength)
  ones = features.cluster_posterior(cluster, loss, num_clusters=k)
  doubled = features.cluster_posterior(cluster, loss, num_clusters=k,
                                       weights=np.full(n, 2.0))
  np.testing.assert_allclose(doubled.mean, ones.mean, rtol=1e-12)


def test_an_llm_never_wrong_is_not_certain_of_it():
  """8 right answers over 4 of 5 clusters: the prior is centred at
  0.5 / 9, so every cell keeps a positive error and an interval."""
  cluster = np.array([0, 0, 1, 1, 2, 2, 3, 3])
  loss = np.zeros((8, 1))
  for prior in (None, 2.0):
    post = features.cluster_posterior(cluster, loss, num_clusters=5,
                                      prior_strength=prior)
    np.testing.assert_allclose(post.prior_mean, 0.5 / 9)
    low, high = post.interval(0.9)
    assert np.all(np.asarray(post.mean) > 0) and np.all(np.asarray(high) > 0)
  # With no prior at all an empty cell could hold any rate.
  post = features.cluster_posterior(cluster, loss, num_clusters=5,
                                    prior_strength=0.0)
  low, high = post.interval(0.9)
  np.testing.assert_array_equal(np.asarray(low)[4], 0.0)
  np.testing.assert_array_equal(np.asarray(high)[4], 1.0)


def test_empirical_bayes_takes_the_grids_best_marginal_likelihood(dtype):
  """An independent NumPy / SciPy scan of the same grid picks the same
  strength for every LLM."""
  rng = np.random.default_rng(1)
  n, m, k = 300, 6, 12
  cluster = rng.integers(0, k, n)
  rates = rng.beta([[0.5, 2, 5, 20, 50, 1]], [[0.5, 2, 5, 20, 50, 1]], (k, m))
  loss = (rng.random((n, m)) < rates[cluster]).astype(float)
  post = features.cluster_posterior(cluster, loss.astype(dtype), num_clusters=k)
  counts, sums = numpy_counts(cluster, loss, np.ones((n, m), bool), np.ones(n), k)
  absolute, relative = features.EVIDENCE_TOLERANCE
  for j in range(m):
    mu = sums[:, j].sum() / counts[:, j].sum()
    scores = np.array([numpy_log_marginal(a, counts[:, j], sums[:, j], mu)
                       for a in features.STRENGTH_GRID])
    slack = absolute + relative * abs(scores.max())
    # The weakest strength as likely as the best, up to rounding.
    best = features.STRENGTH_GRID[np.flatnonzero(scores >= scores.max() - slack)[0]]
    ours = float(post.prior_strength[j])
    if dtype == np.float64:
      np.testing.assert_allclose(ours, best, rtol=1e-12)
    else:
      # float32 may step to a neighbour at the edge of the tolerance.
      score = numpy_log_marginal(ours, counts[:, j], sums[:, j], mu)
      assert score >= scores.max() - 2 * slack, (j, ours, best)


def test_empirical_bayes_recovers_the_strength_that_generated_the_data():
  """Rates drawn from Beta(a mu, a (1 - mu)) with a = 20, 400 clusters of
  40 prompts: the estimate lands within a factor 1.6 of 20."""
  rng = np.random.default_rng(2)
  k, per, mu, a = 400, 40, 0.3, 20.0
  rates = rng.beta(a * mu, a * (1 - mu), k)
  cluster = np.repeat(np.arange(k), per)
  loss = (rng.random((k * per, 1)) < rates[cluster, None]).astype(float)
  post = features.cluster_posterior(cluster, loss, num_clusters=k)
  assert 20 / 1.6 < float(post.prior_strength[0]) < 20 * 1.6
  # Identical clusters: no spread between them, the strongest prior.
  flat = np.tile((np.arange(per) % 4 == 0).astype(float), k)[:, None]
  post = features.cluster_posterior(cluster, flat, num_clusters=k)
  assert float(post.prior_strength[0]) > 1e4
  np.testing.assert_allclose(post.mean, 0.25, atol=1e-3)


def test_empirical_bayes_in_cluster_errors_is_the_posterior_mean():
  rng = np.random.default_rng(3)
  cluster = rng.integers(0, 4, 80)
  loss = (rng.random((80, 3)) < 0.4).astype(float)
  post = features.cluster_posterior(cluster, loss, num_clusters=4)
  errors = cluster_errors(cluster, loss, num_clusters=4,
                          prior_strength="empirical_bayes")
  np.testing.assert_allclose(errors.psi, post.mean, rtol=1e-12)
  np.testing.assert_allclose(errors.counts, post.counts)
  with pytest.raises(ValueError, match="prior_strength must be a non-negative "
                     "number or 'empirical_bayes'"):
    cluster_errors(cluster, loss, num_clusters=4, prior_strength="auto")


def test_beta_quantile_matches_scipy(dtype, mode):
  from scipy.stats import beta as scipy_beta
  rng = np.random.default_rng(4)
  a = rng.exponential(5.0, 40) + 0.05
  b = rng.exponential(5.0, 40) + 0.05
  a[:3] *= 500                             # large counts
  for q in (0.02, 0.1, 0.5, 0.9, 0.99):
    ours = features.beta_quantile(a.astype(dtype), b.astype(dtype), q)
    want = scipy_beta.ppf(q, a, b)
    tol = 2e-5 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(ours, want, rtol=tol, atol=tol)


def test_beta_quantile_edges():
  out = features.beta_quantile(np.array([0.0, 2.0, 0.0, 1.0]),
                               np.array([3.0, 0.0, 0.0, 1.0]), 0.5,
                               fallback=np.full(4, 0.25))
  np.testing.assert_allclose(out, [0.0, 1.0, 0.25, 0.5])
  uniform = features.beta_quantile(np.ones(3), np.ones(3), np.array(0.3))
  np.testing.assert_allclose(uniform, 0.3, rtol=1e-12)
  # q = 0 and 1 are the ends of the support, even where the CDF rounds to
  # 1 long before (a posterior of 50 errors in 5000 prompts).
  ends = features.beta_quantile(np.float32([50.0, 50.0]), np.float32([5e3, 5e3]),
                                np.float32([0.0, 1.0]))
  np.testing.assert_array_equal(ends, [0.0, 1.0])


def test_credible_intervals_narrow_with_more_prompts_and_hold_the_mean():
  rng = np.random.default_rng(5)
  widths = []
  for n in (20, 200, 2000):
    cluster = rng.integers(0, 2, n)
    loss = (rng.random((n, 1)) < 0.3).astype(float)
    post = features.cluster_posterior(cluster, loss, num_clusters=2,
                                      prior_strength=2.0)
    low, high = post.interval(0.9)
    assert np.all((low <= post.mean) & (post.mean <= high))
    widths.append(float(np.max(high - low)))
  assert widths[0] > widths[1] > widths[2]
  low, high = post.interval(0.0)
  np.testing.assert_allclose(low, high)
  np.testing.assert_allclose(post.quantile(0.5), low)


def test_posterior_under_vmap_over_quantiles_does_not_retrace():
  rng = np.random.default_rng(6)
  cluster = rng.integers(0, 3, 50)
  loss = (rng.random((50, 2)) < 0.4).astype(np.float32)
  post = features.cluster_posterior(cluster, loss, num_clusters=3)
  f = jax.jit(lambda p, q: p.quantile(q))
  qs = np.array([0.1, 0.5, 0.9], np.float32)
  batched = jax.vmap(f, in_axes=(None, 0))(post, qs)
  for i, q in enumerate(qs):
    np.testing.assert_allclose(batched[i], f(post, q), rtol=1e-6)
  f(post, np.float32(0.2))
  with no_retrace():
    f(post, np.float32(0.7))


def test_empirical_bayes_under_jit_matches_a_scipy_scan_for_many_llms(dtype):
  """Every grid strength of 2000 random LLMs, jitted: the evidence at
  strength 10, where the log-gamma ratio changes formula at a + b = 10, is
  that of SciPy, so no LLM is pulled to it by a wrong value there."""
  from scipy.special import betaln
  rng = np.random.default_rng(11)
  k, m = 5, 2000
  counts = rng.integers(1, 40, (k, m)).astype(float)
  sums = np.floor(rng.random((k, m)) * counts)
  mu = rng.random(m) * 0.98 + 0.01
  ours = np.asarray(jax.jit(features.empirical_bayes_strength)(
      *(np.asarray(a, dtype) for a in (counts, sums, mu))), np.float64)
  grid = features.STRENGTH_GRID[:, None, None]
  a, b = grid * mu, grid * (1 - mu)
  scores = np.sum(betaln(sums + a, counts - sums + b) - betaln(a, b), axis=1)
  absolute, relative = features.EVIDENCE_TOLERANCE
  best = scores.max(axis=0)
  slack = absolute + relative * np.abs(best)
  want = features.STRENGTH_GRID[np.argmax(scores >= best - slack, axis=0)]
  if dtype == np.float64:
    np.testing.assert_allclose(ours, want, rtol=1e-12)
  else:
    # float32 may step to a neighbour at the edge of the tolerance.
    chosen = np.searchsorted(features.STRENGTH_GRID, ours * (1 - 1e-6))
    assert np.all(scores[chosen, np.arange(m)] >= best - 2 * slack)


def test_log_gamma_ratio_matches_scipy(dtype):
  from scipy.special import gammaln
  rng = np.random.default_rng(7)
  x = np.concatenate([rng.uniform(1e-3, 10, 50), rng.uniform(10, 1e5, 50)])
  s = rng.uniform(0, 300, 100)
  s[:5] = 0.0
  ours = features.log_gamma_ratio(x.astype(dtype), s.astype(dtype))
  want = gammaln(x + s) - gammaln(x)
  # The scale of the result's rounding: s log(x + s), not the difference.
  scale = 1.0 + s * np.abs(np.log(x + s))
  tol = 1e-6 if dtype == np.float32 else 1e-12
  assert np.all(np.abs(np.asarray(ours, np.float64) - want) <= tol * scale)
