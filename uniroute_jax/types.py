"""The dataset type every loader returns, and what every module shares:
array aliases and the matmul precision."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from uniroute_jax import checks

Array = jax.Array

# Every matmul of the library runs at full float32 precision: GPUs and TPUs
# would otherwise use TF32 / bf16 passes, which move k-means distances,
# gamma = Phi Psi and the learned models' outputs by ~1e-3.
PRECISION = jax.lax.Precision.HIGHEST


class RoutingData(NamedTuple):
  """Prompts, their embeddings, and the loss of each LLM on each prompt.

  Attributes:
    embeddings: [n, d] prompt embeddings.
    loss: [n, m] loss of LLM j on prompt i, in [0, 1] (0-1 error, or
      1 - quality score). Entries where ``mask`` is False are ignored.
    mask: [n, m] bool, True where the loss is observed (a missing label is
      False, never a guessed value).
    cost: [m] cost per prompt of each LLM, or [n, m] per-prompt costs.
    model_names: m names.
    prompt_ids: [n] prompt identifiers.
    label_counts: optional [n, m] number of observations each label
      averages (a traffic log may ask an LLM the same prompt twice); None
      when every label is one observation.
  """

  embeddings: np.ndarray
  loss: np.ndarray
  mask: np.ndarray
  cost: np.ndarray
  model_names: tuple[str, ...]
  prompt_ids: np.ndarray
  label_counts: np.ndarray | None = None

  @property
  def num_prompts(self) -> int:
    return int(self.loss.shape[0])

  @property
  def num_models(self) -> int:
    return int(self.loss.shape[1])

  def validate(self, *, labelled_models: bool = False) -> "RoutingData":
    """Checks shapes and values on the host; returns self so calls chain.

    Args:
      labelled_models: also require every LLM to have a label, as the
        evaluation protocol does (an LLM without one has no error to
        represent it, and every area it enters is undefined). A loader
        leaves it to the caller: such a file is valid data.

    Raises:
      ValueError: naming the field and what was expected.
    """
    emb = checks.float_array("embeddings", self.embeddings, ndim=2,
                             shape_doc="[n, d]")
    loss = checks.float_array("loss", self.loss, ndim=2, shape_doc="[n, m]")
    n, m = loss.shape
    checks.same_size("embeddings", emb.shape[0], "loss", n, "prompts")
    checks.mask("mask", self.mask, (n, m))
    checks.cost("cost", self.cost, n, m)
    emb, loss, mask, cost = (np.asarray(a) for a in
                             (emb, loss, self.mask, self.cost))
    checks.host_finite("embeddings", emb)
    checks.host_bool_mask("mask", mask)
    checks.host_in_range("loss", loss, 0.0, 1.0, where=mask.astype(bool))
    checks.host_nonnegative("cost", cost)
    if len(self.model_names) != m:
      raise ValueError(
          f"model_names must have {m} entries, got {len(self.model_names)}")
    if len(set(self.model_names)) != m:
      raise ValueError("model_names must be unique")
    if len(self.prompt_ids) != n:
      raise ValueError(f"prompt_ids must have {n} entries, got {len(self.prompt_ids)}")
    if self.label_counts is not None:
      counts = np.asarray(self.label_counts)
      if counts.shape != (n, m) or counts.dtype.kind not in "iu":
        raise ValueError(f"label_counts must be [n, m] = [{n}, {m}] integers, "
                         f"got {counts.dtype} {counts.shape}")
      if np.any((counts > 0) != mask.astype(bool)):
        raise ValueError("label_counts must be positive exactly where mask is "
                         "True")
    if labelled_models:
      unlabelled = [name for name, labelled in
                    zip(self.model_names, mask.astype(bool).any(axis=0))
                    if not labelled]
      if unlabelled:
        more = (f" (nor have {len(unlabelled) - 1} other LLM(s))"
                if len(unlabelled) > 1 else "")
        raise ValueError(
            f"mask: LLM {str(unlabelled[0])!r} has no label at all{more}; "
            "label some of its prompts or leave it out (select_models)")
    return self

  def select_prompts(self, index) -> "RoutingData":
    """The dataset restricted to the prompts ``index`` (indices or bool mask)."""
    index = np.asarray(index)
    cost = self.cost[index] if np.ndim(self.cost) == 2 else self.cost
    return self._replace(
        embeddings=self.embeddings[index], loss=self.loss[index],
        mask=self.mask[index], cost=cost,
        prompt_ids=np.asarray(self.prompt_ids)[index],
        label_counts=None if self.label_counts is None
        else np.asarray(self.label_counts)[index])

  def select_models(self, index) -> "RoutingData":
    """The dataset restricted to the LLMs ``index`` (indices or bool mask)."""
    index = np.asarray(index)
    positions = np.arange(self.num_models)[index]
    return self._replace(
        loss=self.loss[:, positions], mask=self.mask[:, positions],
        cost=np.asarray(self.cost)[..., positions],
        model_names=tuple(self.model_names[i] for i in positions),
        label_counts=None if self.label_counts is None
        else np.asarray(self.label_counts)[:, positions])
