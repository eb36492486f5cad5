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


@pytest.mark.slow
def test_results_under_the_test_flags_are_those_of_xlas_defaults(tmp_path):
  namespace = {}
  exec(RUN, namespace)
  ours = namespace["run"]()
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if f.split("=")[0] not in TEST_XLA_FLAGS]
  env = dict(os.environ, XLA_FLAGS=" ".join(flags),
             JAX_PLATFORMS=jax.default_backend())
  out = tmp_path / "defaults.npz"
  child = RUN + f"\nnp.savez({str(out)!r}, **run())\n"
  result = subprocess.run([sys.executable, "-c", child], env=env,
                          cwd=pathlib.Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  defaults = dict(np.load(out))
  assert set(defaults) == set(ours)
  for name, value in ours.items():
    np.testing.assert_allclose(value, defaults[name], rtol=1e-9, atol=1e-12,
                               err_msg=name)
