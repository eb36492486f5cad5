"""Trial splits: which prompts train, validate and test, and which LLMs are
seen in training and which are unseen (section 7, App. F of the paper).

Trials are data: index arrays with a leading trial axis, so batches of
trials run as one compiled computation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax import checks


class Split(NamedTuple):
  """Index arrays of one trial, or of many with a leading trial axis.

  Attributes:
    train: training prompts (embeddings; labels of training LLMs only).
    val: validation prompts (labels of every LLM).
    test: test prompts (scoring only).
    train_models: the LLMs seen in training.
    test_models: the unseen LLMs routed between at test time.
  """

  train: np.ndarray
  val: np.ndarray
  test: np.ndarray
  train_models: np.ndarray
  test_models: np.ndarray


def split_sizes(n: int, val_frac: float, test_frac: float) -> tuple[int, int, int]:
  """(train, val, test) counts for n prompts; each is at least 1."""
  for argument, frac in (("val_frac", val_frac), ("test_frac", test_frac)):
    if not 0.0 < frac < 1.0:
      raise checks.ArgumentError(lambda name, argument=argument, frac=frac: (
          f"{name(argument)} must lie in (0, 1), got {frac}"))
  if val_frac + test_frac >= 1.0:
    raise checks.ArgumentError(lambda name: (
        f"{name('val_frac')} + {name('test_frac')} must be below 1, got "
        f"{val_frac} + {test_frac}"))
  n_val = max(1, round(n * val_frac))
  n_test = max(1, round(n * test_frac))
  n_train = n - n_val - n_test
  if n_train < 1:
    raise checks.ArgumentError(lambda name: (
        f"{n} prompt(s) are too few to split into train, validation and test "
        f"prompts, at least one of each: {name('val_frac')} {val_frac} and "
        f"{name('test_frac')} {test_frac} take {n_val} for validation and "
        f"{n_test} for test, which leaves {max(n_train, 0)} to train on"))
  return n_train, n_val, n_test


def model_split_sizes(m: int, test_model_frac: float) -> tuple[int, int]:
  """(training, test) pool sizes: at least 2 test LLMs and 1 training LLM."""
  if not 0.0 < test_model_frac < 1.0:
    raise checks.ArgumentError(lambda name: (
        f"{name('test_model_frac')} must lie in (0, 1), got {test_model_frac}"))
  m_test = max(2, round(m * test_model_frac))
  if m < 3:
    raise ValueError(
        f"{m} LLMs are too few for the protocol: it needs a training pool of "
        "at least 1 LLM and an unseen test pool of at least 2")
  if m - m_test < 1:
    raise checks.ArgumentError(lambda name: (
        f"{name('test_model_frac')} {test_model_frac} holds out {m_test} of "
        f"the {m} LLMs, leaving none to train on; use less than "
        f"{(m - 0.5) / m:.3g}"))
  return m - m_test, m_test


def make_trials(key, num_trials: int, num_prompts: int, num_models: int, *,
                val_frac=0.1, test_frac=0.3, test_model_frac=1 / 3,
                fixed_pool: bool = False) -> Split:
  """Random prompt and LLM splits for ``num_trials`` trials: a batched Split.

  Each field has shape [num_trials, size]; indices are sorted within a trial.
  Trial t uses ``jax.random.fold_in(key, t)``, so the first trials are the
  same whatever ``num_trials`` is.

  With ``fixed_pool``, every LLM is both a training and a test LLM (the
  routers see every LLM's training and validation labels; test prompts are
  still held out): what routing buys on a pool one already has, beside the
  paper's unseen-LLM protocol. ``test_model_frac`` is then not used.
  """
  num_trials = checks.positive_int("num_trials", num_trials)
  n_train, n_val, _ = split_sizes(num_prompts, val_frac, test_frac)
  if fixed_pool:
    if num_models < 2:
      raise ValueError(f"{num_models} LLM(s) are too few to route between; "
                       "a pool needs at least 2")
    m_train = num_models
  else:
    m_train, _ = model_split_sizes(num_models, test_model_frac)

  def one(t):
    prompt_key, model_key = jax.random.split(jax.random.fold_in(key, t))
    prompts = jax.random.permutation(prompt_key, num_prompts)
    models = jax.random.permutation(model_key, num_models)
    test_models = (jnp.arange(num_models) if fixed_pool
                   else jnp.sort(models[m_train:]))
    return (jnp.sort(prompts[:n_train]),
            jnp.sort(prompts[n_train:n_train + n_val]),
            jnp.sort(prompts[n_train + n_val:]),
            jnp.sort(models[:m_train]), test_models)

  parts = jax.vmap(one)(jnp.arange(num_trials))
  return Split(*(np.asarray(p, np.int32) for p in parts))


def make_split(key, num_prompts: int, num_models: int, *, val_frac=0.1,
               test_frac=0.3, test_model_frac=1 / 3,
               fixed_pool: bool = False) -> Split:
  """One trial's split: trial 0 of :func:`make_trials`."""
  trials = make_trials(key, 1, num_prompts, num_models, val_frac=val_frac,
                       test_frac=test_frac, test_model_frac=test_model_frac,
                       fixed_pool=fixed_pool)
  return Split(*(part[0] for part in trials))
