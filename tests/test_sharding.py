"""Trials split across devices (NamedSharding) give the one-device results.

Runs in a child process: the number of (fake CPU) devices is fixed when JAX
starts, and the test session has already started it with one.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)
    from uniroute_jax import make_synthetic, protocol

    assert jax.device_count() == 4, jax.devices()
    data = make_synthetic(jax.random.key(3), num_prompts=600, num_models=7, dim=12)
    # float64: a device's batch of one trial and a batch of four round
    # float32 differently (a few ulp); in float64 they agree to 1e-9.
    data = data._replace(embeddings=data.embeddings.astype(np.float64),
                         loss=data.loss.astype(np.float64),
                         cost=data.cost.astype(np.float64))
    splits = protocol.make_trials(jax.random.key(1), 5, data.num_prompts,
                                  data.num_models)
    methods = (protocol.ZeroRouter(), protocol.KNN(neighbors=(5, 9)),
               protocol.KMeansRouter(clusters=(3, 5), max_iter=20),
               protocol.Oracle())
    mesh = jax.make_mesh((4,), ("trials",))
    one, _ = protocol.run_trials(jax.random.key(2), data, splits, methods=methods,
                                 curve_points=101, batch_size=4)
    for vectorize in (None, 1):
        many, pool = protocol.run_trials(jax.random.key(2), data, splits,
                                         methods=methods, curve_points=101,
                                         batch_size=3, mesh=mesh,
                                         vectorize=vectorize)
        assert pool.quality.shape[0] == 5
        for m in methods:
            for a, b in zip(one[m.name], many[m.name]):
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)

    # The compiled batch really is split: each device holds its own trials.
    batch = protocol.Split(*(np.asarray(p)[:4] for p in splits))
    keys = jax.random.split(jax.random.key(0), 4)
    mesh, replicated, by_trial = protocol.trial_mesh(mesh)
    arrays = jax.device_put(protocol.dataset_arrays(data), replicated)
    batch, keys = jax.device_put((batch, keys), by_trial)
    n_train, n_val = batch.train.shape[1], batch.val.shape[1]
    resolved = tuple(m.resolve(n_train, n_val) for m in methods)
    out = protocol.run_batch(arrays, batch, keys, resolved, curve_points=101,
                             vectorize=4)
    area = out["kmeans"].area
    assert len(area.sharding.device_set) == 4, area.sharding
    assert {s.data.shape for s in area.addressable_shards} == {(1,)}
    print("ok")
""")


@pytest.mark.slow
def test_trials_sharded_over_four_devices_match_one_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=4").strip())
  root = pathlib.Path(__file__).parents[1]
  result = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("ok")
