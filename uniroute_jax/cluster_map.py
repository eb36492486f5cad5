"""UniRoute LearnedMap: a learned soft cluster map Phi(x; theta) in the K-simplex.

UniRoute K-means puts each prompt in one cluster. The learned map (section
5.2 and App. E.3 of the paper) instead predicts cluster probabilities from
the prompt embedding, trained so that gamma(x, h) = Phi(x)^T Psi(h) fits the
training LLMs' correctness labels with binary cross-entropy while their
feature vectors Psi stay fixed. A new LLM still needs only its Psi from the
validation prompts: its predicted loss is Phi(x)^T Psi(h), with nothing
retrained.

Training runs as one jitted program (``lax.scan`` over epochs and
mini-batches of a split (graphdef, params, batch statistics) module and an
optax Adam state), so whole fits can be ``jax.vmap``-ed over trials.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from uniroute_jax import _training
from uniroute_jax import _validation as check
from uniroute_jax import routing
from uniroute_jax._training import CheckpointSelection
from uniroute_jax.types import Array

_HIGHEST = jax.lax.Precision.HIGHEST


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
    self.dim = check.positive_int("dim", dim)
    self.num_clusters = check.positive_int("num_clusters", num_clusters)
    self.hidden = check.widths("hidden", hidden)
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
    return jax.nn.softmax(self.output(h), axis=-1)


class FittedClusterMap(NamedTuple):
  """A trained :class:`ClusterMap`, split into its static graph and arrays.

  A pytree whose only leaves are arrays (the graph definition has none), so
  it passes through ``jax.jit`` and ``jax.vmap``; a vmapped fit gives every
  array a leading trial axis. ``nnx.merge(graphdef, params, batch_stats)``
  rebuilds the module.

  Attributes:
    graphdef: the ``nnx.GraphDef`` of the module (static).
    params: ``nnx.State`` of the ``nnx.Param`` weights.
    batch_stats: ``nnx.State`` of the BatchNorm running averages (empty
      without BatchNorm).
    loss_history: [epochs] mean training loss of each epoch: the mean of its
      mini-batch losses, each taken before that step's update, with batch
      statistics (training mode).
    validation_area: [epochs] the checkpoint-selection area after each epoch
      (NaN when the fit had no ``select``); None for a map not made by
      :func:`fit_cluster_map`.
    best_epoch: [] index of the kept epoch (the last without ``select``), or
      None.
  """

  graphdef: Any
  params: Any
  batch_stats: Any
  loss_history: Array
  validation_area: Array | None = None
  best_epoch: Array | None = None

  @property
  def num_clusters(self) -> int:
    """k, the width of the output layer."""
    return int(self.params["output"]["kernel"].shape[-1])

  @property
  def dim(self) -> int:
    """d, the embedding size the first Dense layer takes."""
    # An empty layer list leaves no "dense" entry in the state.
    dense = self.params.get("dense") or {}
    first = dense[0] if 0 in dense else self.params["output"]
    return int(first["kernel"].shape[-2])


# ----------------------------------------------------------------- the loss


def cluster_map_loss(phi, psi, errors, mask=None, *, eps=1e-6) -> Array:
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
    eps: clipping margin in [0, 0.5) keeping the logarithms finite (traced).

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
  dtype = check.compute_dtype(phi, psi, errors)
  phi = check.array("phi", phi, ndim=2, dtype=dtype, shape_doc="[n, k]")
  psi = check.array("psi", psi, ndim=2, dtype=dtype, shape_doc="[k, m]")
  errors = check.array("errors", errors, ndim=2, dtype=dtype, shape_doc="[n, m]")
  n, k = phi.shape
  if psi.shape[0] != k:
    raise ValueError(
        f"psi must have {k} rows, one per column of phi, got shape {psi.shape}")
  m = psi.shape[1]
  if errors.shape != (n, m):
    raise ValueError(
        f"errors must have shape {(n, m)} ([n, m] from phi and psi), "
        f"got {errors.shape}")
  mask = check.bool_mask("mask", mask, (n, m))
  check.finite("psi", psi)
  check.in_range("errors", errors, 0.0, 1.0, where=mask)
  eps = _check_eps(eps, dtype)
  return _loss(phi, psi, errors, mask, eps)


def _loss(phi, psi, errors, mask, eps):
  gamma = jnp.matmul(phi, jax.lax.stop_gradient(psi), precision=_HIGHEST)
  gamma = jnp.clip(gamma, eps, 1 - eps)
  # Missing labels may be NaN; zero them before they meet a log, or their
  # NaN would leak into the gradient through 0 * NaN.
  e = jnp.where(mask, errors, 0)
  log_lik = e * jnp.log(gamma) + (1 - e) * jnp.log1p(-gamma)
  observed = jnp.sum(mask, dtype=gamma.dtype)
  return -jnp.sum(jnp.where(mask, log_lik, 0)) / jnp.maximum(observed, 1)


# ----------------------------------------------------------------- training


class _Config(NamedTuple):
  """What fixes the module's structure (hashable: a static jit argument)."""

  dim: int
  num_clusters: int
  hidden: tuple[int, ...]
  batch_norm: bool
  momentum: float
  dtype: Any


def _build(config: _Config, key) -> ClusterMap:
  return ClusterMap(config.dim, config.num_clusters, hidden=config.hidden,
                    batch_norm=config.batch_norm, momentum=config.momentum,
                    dtype=config.dtype, param_dtype=config.dtype,
                    rngs=nnx.Rngs(params=key))


def _graphdef(config: _Config):
  return _training.graphdef(_build, config, nnx.Param, nnx.BatchStat)


def fit_cluster_map(key, embeddings, errors, psi, *, mask=None,
                    hidden: Sequence[int] = (128, 128), batch_norm: bool = True,
                    learning_rate=5e-3, batch_size: int = 64, epochs: int = 5,
                    momentum: float = 0.99, eps=1e-6,
                    select: CheckpointSelection | None = None, dtype=None
                    ) -> FittedClusterMap:
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
    hidden: hidden widths (static); () is a single softmax-dense layer.
    batch_norm: BatchNorm on the input and hidden layers (static).
    learning_rate: Adam step size (traced).
    batch_size: prompts per step (static); clamped to n. At least 1, and
      at least 2 with ``batch_norm``.
    epochs: passes over the data (static), at least 1; the paper uses 5.
    momentum: BatchNorm running-average decay (static).
    eps: the loss's clipping margin (traced).
    select: optional held-out prompts with labels of LLMs whose Psi columns
      ``select.models`` names: after each epoch the map (in inference mode)
      routes them by Phi(x)^T Psi, and the weights and running averages of
      the epoch with the largest area are kept (early stopping with the best
      checkpoint restored). None keeps the last epoch.
    dtype: dtype of the weights and of the computation; default: the
      inputs' promoted float, at least float32.

  Returns:
    A :class:`FittedClusterMap`, to use with :func:`apply_cluster_map` or
    :func:`learned_map_predicted_loss`.

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
  dtype = check.float_dtype(dtype, embeddings, errors, psi)
  psi = check.array("psi", psi, ndim=2, dtype=dtype, shape_doc="[k, m]")
  fit = _training.check_fit_inputs(
      key, embeddings, errors, mask=mask, dtype=dtype,
      learning_rate=learning_rate, batch_size=batch_size, epochs=epochs,
      select=select)
  check.same_size("errors", fit.errors.shape[1], "psi", psi.shape[1], "LLMs")
  n, d = fit.embeddings.shape
  if n < 1 or d < 1 or psi.shape[0] < 1:
    raise ValueError(
        f"embeddings [n, d] and psi [k, m] must be non-empty, got "
        f"{fit.embeddings.shape} and {psi.shape}")
  check.finite("psi", psi)
  if batch_norm and fit.batch_size < 2:
    raise ValueError(
        f"batch_size must be at least 2 with batch_norm (a batch of one has "
        f"no variance to normalise by), got {fit.batch_size} for {n} prompts")
  config = _Config(d, psi.shape[0], check.widths("hidden", hidden), bool(batch_norm),
                   _check_momentum(momentum), dtype)
  (params, stats), history, areas, best_epoch = _fit(
      key, fit.embeddings, fit.errors, fit.mask, psi, fit.learning_rate,
      _check_eps(eps, dtype), fit.select, config=config,
      batch_size=fit.batch_size, epochs=fit.epochs)
  return FittedClusterMap(_graphdef(config), params, stats, history, areas,
                          best_epoch)


@functools.partial(jax.jit, static_argnames=("config", "batch_size", "epochs"))
def _fit(key, x, errors, mask, psi, learning_rate, eps, select, *,
         config: _Config, batch_size: int, epochs: int):
  init_key, order_key = jax.random.split(key)
  graphdef, params, stats = nnx.split(_build(config, init_key), nnx.Param,
                                      nnx.BatchStat)
  optimizer = optax.adam(learning_rate)

  def step(carry, rows):
    (params, stats), opt_state = carry
    params, stats, opt_state, loss = _train_step(
        graphdef, optimizer, params, stats, opt_state, x[rows], errors[rows],
        mask[rows], psi, eps)
    return ((params, stats), opt_state), loss

  def predict(state, embeddings):
    phi = _apply(graphdef, *state, embeddings)
    return routing._predicted_loss(phi, psi)

  return _training.train(
      order_key, (params, stats), optimizer.init(params), step,
      num_rows=x.shape[0], batch_size=batch_size, epochs=epochs, dtype=x.dtype,
      select=select, predict=predict)


def _train_step(graphdef, optimizer, params, stats, opt_state, x, errors, mask,
                psi, eps):
  """One Adam step on a mini-batch; pure in the split (params, stats) state.

  Returns the new params, running statistics, optimiser state, and the
  batch loss before the update.
  """

  def loss_fn(params):
    # Fresh Variables at this trace level: the forward pass writes the
    # running averages into them, which the carried ones do not allow.
    model = nnx.merge(graphdef, params, stats, copy=True)
    phi = model(x, use_running_average=False)
    # The forward pass updated the running averages inside ``model``.
    return _loss(phi, psi, errors, mask, eps), nnx.state(model, nnx.BatchStat)

  (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), new_stats, opt_state, loss


# ---------------------------------------------------------------- inference


def apply_cluster_map(fitted: FittedClusterMap, x) -> Array:
  """[n, k] cluster probabilities Phi(x) of a fitted map, in inference mode.

  BatchNorm uses the running averages, so each prompt's row depends on that
  prompt alone (a batch of one gives the same row).

  Args:
    fitted: a :class:`FittedClusterMap` from :func:`fit_cluster_map`.
    x: [n, d] prompt embeddings.
  """
  dtype = check.compute_dtype(x, _param_dtype(fitted))
  x = check.array("x", x, ndim=2, dtype=dtype, shape_doc="[n, d]")
  if x.shape[1] != fitted.dim:
    raise ValueError(
        f"x must have {fitted.dim} columns (the embedding size the map was "
        f"fitted on), got shape {x.shape}")
  return _apply(fitted.graphdef, fitted.params, fitted.batch_stats, x)


def _param_dtype(fitted: FittedClusterMap):
  return jnp.zeros((), fitted.params["output"]["kernel"].dtype)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, params, stats, x):
  return nnx.merge(graphdef, params, stats)(x, use_running_average=True)


def learned_map_predicted_loss(fitted: FittedClusterMap, x, psi) -> Array:
  """gamma = Phi(x) Psi: [n, m] predicted loss of each LLM (eq. 9).

  ``psi`` may describe any pool, in particular test LLMs unseen in training
  (their Psi from the validation prompts): that is what makes the router
  universal.

  Args:
    fitted: a :class:`FittedClusterMap`.
    x: [n, d] prompt embeddings.
    psi: [k, m] per-cluster loss of each LLM in the pool.
  """
  psi = check.array("psi", psi, ndim=2, shape_doc="[k, m]")
  k = fitted.num_clusters
  if psi.shape[0] != k:
    raise ValueError(
        f"psi must have {k} rows (the map's num_clusters), got shape "
        f"{psi.shape}")
  check.finite("psi", psi)
  phi = apply_cluster_map(fitted, x)
  dtype = check.compute_dtype(phi, psi)
  return routing._predicted_loss(phi.astype(dtype), psi.astype(dtype))


# --------------------------------------------------------------- validation


def _check_momentum(momentum) -> float:
  if not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
    raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
  return float(momentum)


def _check_eps(eps, dtype):
  eps = jnp.asarray(eps, dtype)
  if eps.ndim != 0:
    raise ValueError(f"eps must be a scalar, got shape {eps.shape}")
  if check.is_concrete(eps) and not bool((eps >= 0) & (eps < 0.5)):
    raise ValueError(f"eps must lie in [0, 0.5), got {float(eps)!r}")
  return eps
