"""A seeded synthetic routing problem with the structure UniRoute exploits.

Prompts come from a mixture of topics in embedding space. Each LLM has an
overall skill and a per-topic specialisation; a prompt has a difficulty; an
LLM answers correctly with probability sigmoid(skill + specialisation -
difficulty). Cost rises with overall skill, so the cheap LLMs are weaker on
average but some are strong on particular topics: exactly what a router that
knows the prompt's cluster can use and a prompt-blind one cannot.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax import checks
from uniroute_jax.types import RoutingData


def make_synthetic(key, *, num_prompts: int = 5000, num_models: int = 12,
                   num_topics: int = 10, dim: int = 32,
                   specialisation: float = 1.0, missing_rate: float = 0.02
                   ) -> RoutingData:
  """Generates a routing dataset.

  Args:
    key: a ``jax.random.key``.
    num_prompts: n.
    num_models: m.
    num_topics: mixture components of the prompt distribution.
    dim: embedding size d.
    specialisation: spread of the per-topic skill offsets; 0 makes every
      LLM equally good on every topic (routing by topic then cannot help).
    missing_rate: fraction of labels removed at random (kept as mask False).

  Returns:
    A validated :class:`RoutingData` with unit-norm float32 embeddings,
    0/1 losses, per-LLM costs (USD-like, per prompt), names ``llm-00`` ...
    and prompt ids ``p00000`` ....
  """
  n = checks.positive_int("num_prompts", num_prompts)
  m = checks.positive_int("num_models", num_models)
  t = checks.positive_int("num_topics", num_topics)
  d = checks.positive_int("dim", dim)
  if not 0.0 <= missing_rate < 1.0:
    raise ValueError(f"missing_rate must lie in [0, 1), got {missing_rate}")
  if specialisation < 0:
    raise ValueError(f"specialisation must be non-negative, got {specialisation}")
  keys = jax.random.split(key, 9)
  centres = 3.0 * jax.random.normal(keys[0], (t, d)) / jnp.sqrt(d)
  topic_weights = jax.random.dirichlet(keys[1], jnp.full((t,), 2.0))
  topic = jax.random.categorical(keys[2], jnp.log(topic_weights), shape=(n,))
  noise = jax.random.normal(keys[3], (n, d)) / jnp.sqrt(d)
  embeddings = centres[topic] + noise
  embeddings = embeddings / jnp.linalg.norm(embeddings, axis=1, keepdims=True)
  difficulty = jax.random.normal(keys[4], (n,))
  skill = jnp.sort(jax.random.normal(keys[5], (m,)))
  offsets = specialisation * jax.random.normal(keys[6], (m, t))
  logits = skill[None, :] + offsets[:, topic].T - difficulty[:, None]
  correct = jax.random.bernoulli(keys[7], jax.nn.sigmoid(logits))
  cost = 1e-3 * jnp.exp(1.5 * skill + 0.2 * jax.random.normal(keys[8], (m,)))
  mask = np.array(jax.random.uniform(jax.random.fold_in(key, 1), (n, m))
                    >= missing_rate)
  # Every LLM keeps at least one label, every prompt at least one.
  mask[0, :] = True
  return RoutingData(
      embeddings=np.asarray(embeddings, np.float32),
      loss=np.asarray(1.0 - correct, np.float32),
      mask=mask,
      cost=np.asarray(cost, np.float32),
      model_names=tuple(f"llm-{j:02d}" for j in range(m)),
      prompt_ids=np.array([f"p{i:05d}" for i in range(n)]),
  ).validate()
