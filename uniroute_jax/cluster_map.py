"""UniRoute LearnedMap: a learned soft cluster map Phi(x; theta) in the K-simplex.

UniRoute K-means puts each prompt in one cluster. The learned map (section
5.2 and App. E.3 of the paper) instead predicts cluster probabilities from
the prompt embedding, trained so that gamma(x, h) = Phi(x)^T Psi(h) fits the
training LLMs' correctness labels with binary cross-entropy while their
feature vectors Psi stay fixed. A new LLM still needs only its Psi from the
validation prompts: its predicted loss is Phi(x)^T Psi(h), with nothing
retrained.

Training runs as one jitted program (``lax.scan`` over epochs and
mini-batches, the library's one training stack in ``learn``), so whole fits
can be ``jax.vmap``-ed over trials. The map's K output slots may hold fewer
clusters (``cluster_mask``): padding slots get probability 0 and no
gradient, so one compiled fit serves every candidate K.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from uniroute_jax import checks, routing
from uniroute_jax.learn import models, training
from uniroute_jax.learn.models import FittedModel, Mask
from uniroute_jax.learn.training import CheckpointSelection
from uniroute_jax.types import PRECISION, Array


class ClusterMap(nnx.Module):
  """Phi(x; theta): prompt embedding [n, d] -> cluster probabilities [n, k].

  The paper's network (App. E.3) is the default: BatchNorm on the embedding,
  then for each width in ``hidden`` a Dense-BatchNorm-ReLU block, then
  Dense(k) and a softmax. Offsets that the next BatchNorm cancels (the
  hidden Dense biases, and the input BatchNorm's offset when a hidden layer
  follows) are left out; the functions it can represent are the same.
  ``hidden=()`` with ``batch_norm=False`` is the single softmax-dense layer
  of section 5.2, softmax(W x + b).

  Args:
    dim: d, the embedding size.
    num_clusters: k, the number of clusters (rows of Psi).
    hidden: widths of the hidden Dense layers (the depth is its length).
    batch_norm: whether to normalise the input and every hidden layer.
    momentum: BatchNorm running-average decay (Keras' and Flax's 0.99).
      Inference uses the running averages, which start at mean 0 and
      variance 1 and keep a fraction momentum ** steps of that start, so
      use a smaller value when training takes only a few dozen steps.
    rngs: ``nnx.Rngs`` for the Dense kernels (the ``params`` stream).
    dtype: compute dtype; None promotes the input and parameter dtypes.
    param_dtype: dtype of the weights and of the running statistics.

  Attributes:
    cluster_mask: a :class:`~uniroute_jax.learn.Mask` [k] bool, all True
      unless set: False slots are padding (probability 0).

  Examples:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> phi = ClusterMap(4, 3, hidden=(), batch_norm=False, rngs=nnx.Rngs(0))
    >>> p = phi(jnp.ones((2, 4)))
    >>> p.shape, bool(jnp.allclose(p.sum(axis=1), 1.0))
    ((2, 3), True)
  """

  def __init__(self, dim: int, num_clusters: int, *,
               hidden: Sequence[int] = (128, 128), batch_norm: bool = True,
               momentum: float = 0.99, rngs: nnx.Rngs, dtype=None,
               param_dtype=jnp.float32):
    self.dim = checks.positive_int("dim", dim)
    self.num_clusters = checks.positive_int("num_clusters", num_clusters)
    self.hidden = checks.widths("hidden", hidden)
    self.batch_norm = bool(batch_norm)
    momentum = _check_momentum(momentum)

    # Flax keeps running statistics in float32 whatever param_dtype says.
    stats_dtype = jnp.promote_types(param_dtype, jnp.float32)

    def norm(width, use_bias=True):
      layer = nnx.BatchNorm(width, momentum=momentum, use_bias=use_bias,
                            dtype=dtype, param_dtype=param_dtype, rngs=rngs)
      layer.mean = nnx.BatchStat(jnp.zeros((width,), stats_dtype))
      layer.var = nnx.BatchStat(jnp.ones((width,), stats_dtype))
      return layer

    def dense(n_in, n_out, use_bias=True):
      return nnx.Linear(n_in, n_out, use_bias=use_bias, dtype=dtype,
                        param_dtype=param_dtype, rngs=rngs)

    widths = (self.dim,) + self.hidden
    # An offset that a later BatchNorm subtracts again (a hidden Dense bias,
    # the input BatchNorm's offset when a hidden layer follows) has a
    # gradient of pure rounding noise, which Adam would scale up to full
    # steps: leave it out. The function class is unchanged.
    self.input_norm = norm(self.dim, use_bias=not self.hidden) if (
        self.batch_norm) else None
    self.dense = nnx.List(
        [dense(a, b, use_bias=not self.batch_norm)
         for a, b in zip(widths[:-1], widths[1:])])
    self.norms = nnx.List(
        [norm(w) for w in self.hidden] if self.batch_norm else [])
    self.output = dense(widths[-1], self.num_clusters)
    self.cluster_mask = Mask(jnp.ones((self.num_clusters,), bool))

  def __call__(self, x, *, use_running_average: bool | None = None) -> Array:
    """[n, k] cluster probabilities of the prompts ``x`` [n, d].

    ``use_running_average`` (static) is passed to every BatchNorm: False
    normalises with the batch statistics and updates the running averages
    (training), True uses the running averages (inference); None keeps each
    layer's own setting (Flax's ``model.train()`` / ``model.eval()``).
    """
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f"x must be a [n, {self.dim}] array, got shape {x.shape}")
    h = x
    if self.input_norm is not None:
      h = self.input_norm(h, use_running_average=use_running_average)
    for i, layer in enumerate(self.dense):
      h = layer(h)
      if self.batch_norm:
        h = self.norms[i](h, use_running_average=use_running_average)
      h = jax.nn.relu(h)
    logits = jnp.where(self.cluster_mask[...], self.output(h), -jnp.inf)
    return jax.nn.softmax(logits, axis=-1)


# ----------------------------------------------------------------- the loss


def cluster_map_loss(phi, psi, errors, mask=None, *, eps=None) -> Array:
  """Binary cross-entropy of gamma = Phi Psi against the error labels.

    L = -mean_{(i, j) observed} [e_ij log gamma_ij + (1 - e_ij) log(1 - gamma_ij)]

  with gamma = clip(phi @ psi, eps, 1 - eps). Psi is held fixed: no gradient
  flows into it. Labels may be soft (a loss in [0, 1] rather than 0/1).

  Args:
    phi: [n, k] cluster probabilities of the prompts.
    psi: [k, m] per-cluster loss of each training LLM.
    errors: [n, m] loss of each LLM on each prompt, in [0, 1] (1 = wrong).
      Unobserved entries are ignored and may hold anything, NaN included.
    mask: optional [n, m] bool, False where a label is missing.
    eps: clipping margin in [0, 0.5) keeping the logarithms finite (traced;
      default 1e-6).

  Returns:
    [] the mean over observed entries; 0 when no entry is observed.

  Examples:
    >>> import jax.numpy as jnp
    >>> phi = jnp.array([[1.0, 0.0]], jnp.float32)   # 1 prompt, 2 clusters
    >>> psi = jnp.array([[0.5, 0.5], [0.1, 0.9]], jnp.float32)   # 2 LLMs
    >>> errors = jnp.array([[0.0, 1.0]], jnp.float32)
    >>> cluster_map_loss(phi, psi, errors)   # log 2
    Array(0.6931472, dtype=float32)
  """
  phi = checks.float_array("phi", phi, ndim=2, shape_doc="[n, k]")
  psi = checks.float_array("psi", psi, ndim=2, shape_doc="[k, m]")
  errors = checks.float_array("errors", errors, ndim=2, shape_doc="[n, m]")
  n, k = phi.shape
  if psi.shape[0] != k:
    raise ValueError(
        f"psi must have {k} rows, one per column of phi, got shape {psi.shape}")
  m = psi.shape[1]
  if errors.shape != (n, m):
    raise ValueError(
        f"errors must have shape {(n, m)} ([n, m] from phi and psi), "
        f"got {errors.shape}")
  mask = checks.mask("mask", mask, (n, m))
  eps = _check_eps(eps)
  return _loss_kernel(phi, psi, errors, mask, eps,
                      dtype=checks.compute_dtype(phi, psi, errors))


@checks.kernel(static_argnames=("dtype",))
def _loss_kernel(phi, psi, errors, mask, eps, *, dtype):
  phi, psi, errors = (a.astype(dtype) for a in (phi, psi, errors))
  mask = jnp.ones(errors.shape, bool) if mask is None else mask.astype(bool)
  eps = _eps(eps, dtype)
  checks.require(jnp.all(jnp.isfinite(psi)), "cluster_map_loss: psi must be finite")
  checks.require(jnp.all(jnp.where(mask, (errors >= 0) & (errors <= 1), True)),
                 "cluster_map_loss: errors must lie in [0, 1] where labelled")
  return _loss(phi, psi, errors, mask, eps)


def _loss(phi, psi, errors, mask, eps):
  gamma = jnp.matmul(phi, jax.lax.stop_gradient(psi), precision=PRECISION)
  # The logarithms in float32 at least: in bfloat16 or float16, 1 - eps
  # rounds to 1 and log1p(-gamma) to -inf for an LLM that is always wrong.
  wide = jnp.promote_types(gamma.dtype, jnp.float32)
  eps = jnp.asarray(eps).astype(wide)
  gamma = jnp.clip(gamma.astype(wide), eps, 1 - eps)
  # Missing labels may be NaN; zero them before they meet a log, or their
  # NaN would leak into the gradient through 0 * NaN.
  e = jnp.where(mask, errors.astype(wide), 0)
  log_lik = e * jnp.log(gamma) + (1 - e) * jnp.log1p(-gamma)
  observed = jnp.sum(mask, dtype=gamma.dtype)
  return -jnp.sum(jnp.where(mask, log_lik, 0)) / jnp.maximum(observed, 1)


# ----------------------------------------------------------------- training


class ClusterMapConfig(NamedTuple):
  """What fixes a :class:`ClusterMap`'s structure (hashable: static in jit)."""

  dim: int
  num_clusters: int
  hidden: tuple[int, ...] = (128, 128)
  batch_norm: bool = True
  momentum: float = 0.99
  dtype: Any = jnp.float32

  def build(self, key) -> ClusterMap:
    return ClusterMap(self.dim, self.num_clusters, hidden=self.hidden,
                      batch_norm=self.batch_norm, momentum=self.momentum,
                      dtype=self.dtype, param_dtype=self.dtype,
                      rngs=nnx.Rngs(params=key))

  @classmethod
  def of(cls, fitted: FittedModel) -> "ClusterMapConfig":
    """The configuration a fitted map was built from (checked to rebuild
    its graph exactly)."""
    fitted = models.check_fitted("cluster_map", fitted, ClusterMap)
    module = fitted.module
    momentum = module.input_norm.momentum if module.batch_norm else 0.99
    config = cls(module.dim, module.num_clusters, tuple(module.hidden),
                 bool(module.batch_norm), float(momentum),
                 jnp.dtype(module.output.param_dtype))
    if models.graphdef(config) != fitted.graphdef:
      raise ValueError(
          "cluster_map must come from fit_cluster_map (or be a ClusterMap "
          "whose dtype equals its param_dtype), so that it can be rebuilt")
    return config


_DEFAULT_LEARNING_RATE = 5e-3
_DEFAULT_EPS = 1e-6


def fit_cluster_map(key, embeddings, errors, psi, *, mask=None,
                    cluster_mask=None, hidden: Sequence[int] = (128, 128),
                    batch_norm: bool = True, learning_rate=None,
                    batch_size: int = 64, epochs: int = 5,
                    momentum: float = 0.99, eps=None,
                    select: CheckpointSelection | None = None, dtype=None
                    ) -> FittedModel:
  """Trains a :class:`ClusterMap` with Adam on :func:`cluster_map_loss`.

  Each epoch visits the prompts in a fresh random order in n // batch_size
  full mini-batches; the n mod batch_size prompts left over are dropped for
  that epoch (a new permutation picks different ones next epoch). A short
  last batch would give BatchNorm noisy statistics and an Adam step as large
  as a full batch's. A ``batch_size`` above n is clamped to n (one
  full-batch step per epoch). So the number of steps, epochs *
  (n // batch_size), is fixed by the shapes, and the whole fit is a single
  jitted program that ``jax.vmap`` maps over trials of equal shapes.
  BatchNorm statistics are then per trial: vmap maps the whole function, so
  each trial normalises with its own batch.

  A prompt whose labels are all masked contributes nothing to the loss but
  still enters the BatchNorm batch statistics, like any unlabelled prompt.

  Args:
    key: a ``jax.random.key``; it fixes the initial weights and the order of
      the prompts in every epoch. The same key gives the same fit.
    embeddings: [n, d] prompt embeddings (training prompts).
    errors: [n, m] loss of each training LLM on each prompt, in [0, 1].
    psi: [k, m] per-cluster loss of each training LLM, held fixed.
    mask: optional [n, m] bool, False where a label is missing.
    cluster_mask: optional [k] bool (traced), False for padding clusters:
      their probability is 0 and their weights get no gradient, so the
      active clusters train as in a map with only them (the protocol fits
      every candidate K with one program this way).
    hidden: hidden widths (static); () is a single softmax-dense layer.
    batch_norm: BatchNorm on the input and hidden layers (static).
    learning_rate: Adam step size (traced; default 5e-3, the paper's).
    batch_size: prompts per step (static); clamped to n. At least 1, and
      at least 2 with ``batch_norm``.
    epochs: passes over the data (static), at least 1; the paper uses 5.
    momentum: BatchNorm running-average decay (static).
    eps: the loss's clipping margin (traced; default 1e-6).
    select: optional held-out prompts with labels of LLMs whose Psi columns
      ``select.models`` names: after each epoch the map (in inference mode)
      routes them by Phi(x)^T Psi, and the weights and running averages of
      the epoch with the largest area are kept (early stopping with the best
      checkpoint restored). None keeps the last epoch.
    dtype: dtype of the weights and of the computation; default: the
      inputs' promoted float, at least float32.

  Returns:
    A :class:`~uniroute_jax.learn.FittedModel` holding the map, to use with
    :func:`apply_cluster_map` or :func:`learned_map_predicted_loss`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (32, 4))
    >>> e = (x[:, :1] > 0).astype(jnp.float32) * jnp.ones((1, 3))
    >>> psi = jnp.array([[0.9, 0.9, 0.9], [0.1, 0.1, 0.1]])
    >>> fit = fit_cluster_map(jax.random.key(1), x, e, psi, hidden=(8,),
    ...                       batch_size=8, epochs=2)
    >>> fit.loss_history.shape, apply_cluster_map(fit, x).shape
    ((2,), (32, 2))
  """
  dtype = checks.float_dtype(dtype, embeddings, errors, psi)
  psi = checks.float_array("psi", psi, ndim=2, shape_doc="[k, m]")
  fit = training.check_fit_inputs(
      key, embeddings, errors, mask=mask, learning_rate=learning_rate,
      batch_size=batch_size, epochs=epochs, select=select)
  checks.same_size("errors", fit.errors.shape[1], "psi", psi.shape[1], "LLMs")
  n, d = fit.embeddings.shape
  if psi.shape[0] < 1:
    raise ValueError(f"psi [k, m] must have at least one row, got {psi.shape}")
  cluster_mask = checks.mask("cluster_mask", cluster_mask, psi.shape[:1])
  eps = _check_eps(eps)
  if batch_norm and fit.batch_size < 2:
    raise ValueError(
        f"batch_size must be at least 2 with batch_norm (a batch of one has "
        f"no variance to normalise by), got {fit.batch_size} for {n} prompts")
  config = ClusterMapConfig(d, psi.shape[0], checks.widths("hidden", hidden),
                            bool(batch_norm), _check_momentum(momentum), dtype)
  return _fit(key, fit.embeddings, fit.errors, fit.mask, psi, cluster_mask,
              fit.learning_rate, eps, fit.select, config=config,
              batch_size=fit.batch_size, epochs=fit.epochs)


@checks.kernel(static_argnames=("config", "batch_size", "epochs"))
def _fit(key, x, errors, mask, psi, cluster_mask, learning_rate, eps, select,
         *, config: ClusterMapConfig, batch_size: int, epochs: int):
  dtype = config.dtype
  x, errors, psi = (a.astype(dtype) for a in (x, errors, psi))
  mask = jnp.ones(errors.shape, bool) if mask is None else mask.astype(bool)
  learning_rate = jnp.asarray(
      _DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate, dtype)
  eps = _eps(eps, dtype)
  training.require_fit_values(x, errors, mask, learning_rate, "fit_cluster_map")
  checks.require(jnp.all(jnp.isfinite(psi)), "fit_cluster_map: psi must be finite")
  if select is not None:
    select = training.require_selection(
        jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(
            a.dtype, jnp.floating) else a, select), psi.shape[1],
        "fit_cluster_map")
  init_key, order_key = jax.random.split(key)
  model = config.build(init_key)
  if cluster_mask is not None:
    model.cluster_mask[...] = cluster_mask.astype(bool)

  def batch_loss(module, rows):
    phi = module(x[rows], use_running_average=False)
    return _loss(phi, psi, errors[rows], mask[rows], eps)

  def predict(module, embeddings):
    phi = module(embeddings, use_running_average=True)
    return routing.predicted_loss(phi, psi)

  return models.fit_model(
      order_key, model, batch_loss=batch_loss, predict=predict,
      num_rows=x.shape[0], batch_size=batch_size, epochs=epochs,
      learning_rate=learning_rate, dtype=dtype, select=select)


# ---------------------------------------------------------------- inference


def apply_cluster_map(fitted: FittedModel, x) -> Array:
  """[n, k] cluster probabilities Phi(x) of a fitted map, in inference mode.

  BatchNorm uses the running averages, so each prompt's row depends on that
  prompt alone (a batch of one gives the same row). Padding clusters get 0.

  Args:
    fitted: a fitted map from :func:`fit_cluster_map`.
    x: [n, d] prompt embeddings.
  """
  module = models.check_fitted("fitted", fitted, ClusterMap).module
  x = checks.float_array("x", x, ndim=2, shape_doc="[n, d]")
  if x.shape[1] != module.dim:
    raise ValueError(
        f"x must have {module.dim} columns (the embedding size the map was "
        f"fitted on), got shape {x.shape}")
  return _apply(fitted, x, dtype=checks.compute_dtype(x, fitted.param_dtype))


@checks.kernel(static_argnames=("dtype",))
def _apply(fitted, x, *, dtype):
  return fitted.module(x.astype(dtype), use_running_average=True)


def learned_map_predicted_loss(fitted: FittedModel, x, psi) -> Array:
  """gamma = Phi(x) Psi: [n, m] predicted loss of each LLM (eq. 9).

  ``psi`` may describe any pool, in particular test LLMs unseen in training
  (their Psi from the validation prompts): that is what makes the router
  universal.

  Args:
    fitted: a fitted map from :func:`fit_cluster_map`.
    x: [n, d] prompt embeddings.
    psi: [k, m] per-cluster loss of each LLM in the pool.
  """
  psi = checks.float_array("psi", psi, ndim=2, shape_doc="[k, m]")
  k = models.check_fitted("fitted", fitted, ClusterMap).module.num_clusters
  if psi.shape[0] != k:
    raise ValueError(
        f"psi must have {k} rows (the map's num_clusters), got shape "
        f"{psi.shape}")
  return routing.predicted_loss(apply_cluster_map(fitted, x), psi)


# --------------------------------------------------------------- validation


def _check_momentum(momentum) -> float:
  # A NumPy scalar (np.float32(0.9)) is a number too; bools are not.
  if (isinstance(momentum, (bool, np.bool_))
      or not isinstance(momentum, (int, float, np.integer, np.floating))
      or not 0 <= momentum < 1):
    raise ValueError(f"momentum must be a number in [0, 1), got "
                     f"{checks.shown(momentum)}")
  return float(momentum)


def _check_eps(eps):
  return None if eps is None else checks.scalar("eps", eps)


def _eps(eps, dtype):
  eps = jnp.asarray(_DEFAULT_EPS if eps is None else eps, dtype)
  checks.require((eps >= 0) & (eps < 0.5), "eps must lie in [0, 0.5), got {}",
                 eps)
  return eps
