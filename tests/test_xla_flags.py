"""The suite's XLA flags (see conftest.py) change how fast programs compile,
not what they compute: the protocol on a small dataset gives the same
numbers under them as under XLA's defaults, computed in a child process that
starts JAX without them."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from conftest import TEST_XLA_FLAGS

RUN = textwrap.dedent("""
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    from uniroute_jax import make_synthetic, protocol

    def run():
        data = make_synthetic(jax.random.key(3), num_prompts=400, num_models=6,
                              dim=8)
        data = data._replace(embeddings=data.embeddings.astype(np.float64),
                             loss=data.loss.astype(np.float64),
                             cost=data.cost.astype(np.float64))
        splits = protocol.make_trials(jax.random.key(1), 1, data.num_prompts,
                                      data.num_models)
        # K-means, Psi by empirical Bayes, a trained map, curves, metrics
        # and excess risks: most of the library's kinds of computation.
        methods = (
            protocol.KMeansRouter(clusters=(3, 5), max_iter=20,
                                  empirical_bayes=True),
            protocol.LearnedMapRouter(clusters=(3,), max_iter=20, epochs=2,
                                      hidden=(4,)))
        out, _ = protocol.run_trials(jax.random.key(2), data, splits,
                                     methods=methods, curve_points=21)
        return {f"{name}.{field}": np.asarray(value)
                for name, metrics in out.items()
                for field, value in zip(metrics._fields, metrics)}
""")


def _under_xla_defaults(code: str, tmp_path) -> dict:
  """Runs ``code`` (which defines ``run()`` returning arrays by name) in a
  child process that starts JAX without the suite's flags."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if f.split("=")[0] not in TEST_XLA_FLAGS]
  env = dict(os.environ, XLA_FLAGS=" ".join(flags),
             JAX_PLATFORMS=jax.default_backend())
  out = tmp_path / "defaults.npz"
  child = code + f"\nnp.savez({str(out)!r}, **run())\n"
  result = subprocess.run([sys.executable, "-c", child], env=env,
                          cwd=pathlib.Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(np.load(out))


@pytest.mark.slow
def test_results_under_the_test_flags_are_those_of_xlas_defaults(tmp_path):
  namespace = {}
  exec(RUN, namespace)
  ours = namespace["run"]()
  defaults = _under_xla_defaults(RUN, tmp_path)
  assert set(defaults) == set(ours)
  for name, value in ours.items():
    np.testing.assert_allclose(value, defaults[name], rtol=1e-9, atol=1e-12,
                               err_msg=name)


MATRIX_FACTORIZATION_TRIALS = textwrap.dedent("""
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    from uniroute_jax import CheckpointSelection, make_synthetic, protocol
    from uniroute_jax.baselines import clairvoyant

    def run():
        data = make_synthetic(jax.random.key(3), num_prompts=700, num_models=7,
                              dim=12)
        data = data._replace(embeddings=data.embeddings.astype(np.float64),
                             loss=data.loss.astype(np.float64),
                             cost=data.cost.astype(np.float64))
        splits = protocol.make_trials(jax.random.key(1), 2, data.num_prompts,
                                      data.num_models)
        arrays = protocol.dataset_arrays(data)
        keys = jax.random.split(jax.random.key(2), 2)
        method = protocol.MatrixFactorizationRouter(ranks=(2, 4), epochs=2)
        method = method.resolve(splits.train.shape[1], splits.val.shape[1])

        def fits(split, key):
            # Both ranks vmapped, each keeping its best epoch.
            # as the method does: best epoch on the test pool's validation
            # labels.
            trial = protocol.gather_trial(arrays, split)
            select = CheckpointSelection(
                trial.val_emb, trial.val_test_loss, trial.val_test_cost,
                trial.test_models, trial.val_test_mask)
            return jax.vmap(lambda rank: clairvoyant.fit_matrix_factorization(
                key, trial.train_emb, trial.train_all_loss, rank=4,
                active_rank=rank, mask=trial.train_all_mask, epochs=2,
                select=select))(np.array([2, 4]))

        def trials(split, key):
            return method.run(protocol.gather_trial(arrays, split), key)

        out = {}
        for name, f in (("fit", fits), ("trial", trials)):
            vectorised = jax.jit(jax.vmap(f))(splits, keys)
            in_turn = jax.jit(lambda s, k: jax.lax.map(
                lambda a: f(*a), (s, k)))(splits, keys)
            for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(
                    vectorised), jax.tree.leaves(in_turn)):
                out[f"{name}{jax.tree_util.keystr(path)}"] = np.stack([a, b])
        return out
""")


@pytest.mark.slow
def test_matrix_factorization_trials_vectorised_or_in_turn_agree(tmp_path):
  """An accelerator's way of running trials (vmapped, with every rank
  vmapped inside) keeps each fit's own best epoch, as trials in turn do.

  Checked under XLA's defaults: under the suite's two flags together, and
  only then, XLA:CPU computes one vmapped fit's kept first-layer kernel as
  its last epoch's (trial 1, rank 2, whose best epoch is the first), though
  its areas, its best epoch and its output kernel are right; either flag
  alone agrees. The program is the same under every flag, so the defaults
  are the reference.
  """
  out = _under_xla_defaults(MATRIX_FACTORIZATION_TRIALS, tmp_path)
  best = out["fit.best_epoch"]
  # The case that matters: fits that keep different epochs in one batch.
  assert len(np.unique(best[0])) == 2, best
  for name, (vectorised, in_turn) in out.items():
    np.testing.assert_allclose(vectorised, in_turn, rtol=1e-9, atol=1e-12,
                               err_msg=name)
