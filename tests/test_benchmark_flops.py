"""The FLOP count behind benchmarks/protocol.py's floor: hand-computed cases
and XLA's own cost analysis of loop-free programs."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.fixture
def count(monkeypatch):
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parents[1]))
  from benchmarks.protocol import fixed_loop_flops
  return lambda fn, *args: fixed_loop_flops(jax.make_jaxpr(fn)(*args).jaxpr)


A, B = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)


def test_a_product_and_a_batched_product_match_xla(count):
  batched_a, batched_b = np.ones((2, 3, 4), np.float32), np.ones((2, 4, 5), np.float32)
  for fn, args, flops in ((jnp.matmul, (A, B), 2 * 3 * 4 * 5),
                          (jnp.matmul, (batched_a, batched_b), 2 * 2 * 3 * 4 * 5),
                          (lambda a: jnp.einsum("ij,ij->", a, a), (A,), 2 * 3 * 4)):
    assert count(fn, *args) == (flops, 0)
    xla = jax.jit(fn).lower(*args).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, list) else xla
    assert xla["flops"] == pytest.approx(flops, rel=0.2)


def test_a_scan_counts_its_length_and_a_while_loop_its_body_apart(count):
  def scanned(a, b):
    return jax.lax.scan(lambda c, _: (c + jnp.sum(a @ b), None), 0.0, None,
                        length=7)[0]

  def looped(a, b):
    return jax.lax.while_loop(lambda c: c[1] < 5,
                              lambda c: (c[0] + jnp.sum(a @ b), c[1] + 1),
                              (0.0, 0))[0]

  def nested(a, b):
    return jax.lax.scan(lambda c, _: (c + looped(a, b) + jnp.sum(a @ b), None),
                        0.0, None, length=3)[0]

  assert count(scanned, A, B) == (7 * 120, 0)
  assert count(looped, A, B) == (0, 120)
  assert count(nested, A, B) == (3 * 120, 120)
  assert count(jax.jit(scanned), A, B) == (7 * 120, 0)   # inside a jit


def test_a_choice_counts_its_cheapest_branch(count):
  def chosen(p, a, b):
    return jax.lax.cond(p, lambda: jnp.sum(a @ b) + jnp.sum(a @ b),
                        lambda: jnp.sum(a @ b))

  def either(a, b):
    return jax.lax.platform_dependent(a, b, cpu=lambda a, b: jnp.sum(a),
                                      default=lambda a, b: jnp.sum(a @ b))

  assert count(chosen, True, A, B) == (120, 0)
  assert count(either, A, B) == (0, 0)
