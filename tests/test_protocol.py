"""Synthetic data, splits and one evaluation trial."""

import jax
import numpy as np
import pytest

from uniroute_jax import RoutingData, make_synthetic, protocol


def test_synthetic_is_seeded_and_valid():
  a = make_synthetic(jax.random.key(0), num_prompts=300, num_models=5, dim=8)
  b = make_synthetic(jax.random.key(0), num_prompts=300, num_models=5, dim=8)
  c = make_synthetic(jax.random.key(1), num_prompts=300, num_models=5, dim=8)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert not np.array_equal(a.loss, c.loss)
  assert a.embeddings.shape == (300, 8) and a.loss.shape == (300, 5)
  assert set(np.unique(a.loss)) <= {0.0, 1.0}
  assert 0.9 < a.mask.mean() < 1.0  # some labels missing, most present
  np.testing.assert_allclose(np.linalg.norm(a.embeddings, axis=1), 1.0, rtol=1e-5)


def test_synthetic_cost_rises_with_skill():
  data = make_synthetic(jax.random.key(2), num_prompts=4000, num_models=8)
  accuracy = 1 - (data.loss * data.mask).sum(0) / data.mask.sum(0)
  assert np.corrcoef(np.log(data.cost), accuracy)[0, 1] > 0.5


def test_split_is_a_partition():
  split = protocol.make_split(jax.random.key(0), 1000, 9, val_frac=0.1,
                              test_frac=0.3, test_model_frac=1 / 3)
  prompts = np.concatenate([split.train, split.val, split.test])
  assert sorted(prompts.tolist()) == list(range(1000))
  assert (len(split.train), len(split.val), len(split.test)) == (600, 100, 300)
  models = np.concatenate([split.train_models, split.test_models])
  assert sorted(models.tolist()) == list(range(9))
  assert len(split.test_models) == 3


def test_evaluate_split_ordering_on_structured_data():
  data = make_synthetic(jax.random.key(0), num_prompts=3000, num_models=10)
  split = protocol.make_split(jax.random.key(1), data.num_prompts, data.num_models)
  out = protocol.evaluate_split(jax.random.key(2), data, split)
  area = {name: float(r.metrics.area) for name, r in out.items()}
  assert area["zero"] < area["kmeans"] < area["oracle"]
  assert area["knn"] < area["oracle"]


def test_test_llms_are_never_seen_in_clustering():
  """k-means sees training embeddings only; changing anything else (labels of
  the training LLMs, test-prompt embeddings) leaves the clustering alone."""
  data = make_synthetic(jax.random.key(3), num_prompts=600, num_models=6)
  split = protocol.make_split(jax.random.key(4), data.num_prompts, data.num_models)
  base = protocol.evaluate_split(jax.random.key(5), data, split, methods=("kmeans",))
  loss = data.loss.copy()
  loss[:, split.train_models] = 1 - loss[:, split.train_models]
  changed = protocol.evaluate_split(jax.random.key(5), data._replace(loss=loss),
                                    split, methods=("kmeans",))
  for a, b in zip(base["kmeans"].metrics, changed["kmeans"].metrics):
    assert float(a) == float(b)


def test_routing_data_validation():
  good = make_synthetic(jax.random.key(0), num_prompts=20, num_models=3)
  with pytest.raises(ValueError, match=r"loss must lie in \[0.0, 1.0\]"):
    good._replace(loss=good.loss + 2).validate()
  with pytest.raises(ValueError, match="embeddings must be finite"):
    good._replace(embeddings=np.full_like(good.embeddings, np.nan)).validate()
  with pytest.raises(ValueError, match="cost must be non-negative"):
    good._replace(cost=-good.cost).validate()
  with pytest.raises(ValueError, match="embeddings and loss must agree"):
    good._replace(embeddings=good.embeddings[:5]).validate()
  with pytest.raises(ValueError, match="model_names must be unique"):
    good._replace(model_names=("a", "a", "b")).validate()
  sub = good.select_models([2, 0]).select_prompts(np.arange(20) < 10)
  assert sub.model_names == ("llm-02", "llm-00") and sub.num_prompts == 10
  assert isinstance(sub, RoutingData)


@pytest.mark.parametrize("kwargs, match", [
    (dict(val_frac=0.0), "val_frac must lie in"),
    (dict(val_frac=0.5, test_frac=0.5), "val_frac \\+ test_frac must be below 1"),
    (dict(test_model_frac=1.0), "test_model_frac must lie in"),
])
def test_bad_split_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    protocol.make_split(jax.random.key(0), 100, 6, **kwargs)
