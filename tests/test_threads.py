"""Compiled calls from several host threads: order, context, fallbacks."""

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uniroute_jax import checks, threads


def test_results_come_in_order_whatever_order_the_calls_end_in():
  def slow_first(i):
    time.sleep(0.05 if i == 0 else 0.0)
    return i, threading.get_ident()

  out = list(threads.in_order(slow_first, list(range(6)), 2))
  assert [i for i, _ in out] == list(range(6))
  assert len({ident for _, ident in out}) == 2   # two threads ran them


def test_one_worker_runs_on_the_calling_thread():
  here = threading.get_ident()
  out = list(threads.in_order(lambda i: threading.get_ident(), [0, 1, 2], 1))
  assert out == [here] * 3


def test_workers_see_the_callers_checking_state():
  """The checking state is a context variable: each call runs in a copy
  of the caller's context, so a kernel traced there keeps its checks."""
  seen = []
  token = checks._CHECKING.set(True)
  try:
    list(threads.in_order(lambda i: seen.append(checks.checking()), [0, 1, 2], 2))
  finally:
    checks._CHECKING.reset(token)
  assert seen == [True] * 3
  assert not checks.checking()


def test_an_error_in_a_call_reaches_the_caller():
  def fail_on_two(i):
    if i == 2:
      raise ValueError("item 2")
    return i

  with pytest.raises(ValueError, match="item 2"):
    list(threads.in_order(fail_on_two, list(range(5)), 2))


def test_jitted_calls_from_two_threads_equal_one_thread():
  f = jax.jit(lambda x: jnp.sort(x @ x.T, axis=1)[:, :5])
  xs = [np.random.default_rng(i).normal(size=(64, 8)).astype(np.float32)
        for i in range(4)]
  two = list(threads.in_order(lambda x: np.asarray(f(x)), xs, 2))
  for x, got in zip(xs, two):
    np.testing.assert_array_equal(got, np.asarray(f(x)))


def test_no_threads_inside_a_thread_local_jax_option():
  """JAX's option contexts are thread-local: inside one, a worker thread
  would trace another program, so callers stay on their own thread."""
  default = 2 if jax.default_backend() == "cpu" else 1
  assert threads.threads_see_this_configuration()
  assert threads.workers(None) == default and threads.workers(3) == 3
  with jax.enable_x64(not jax.config.jax_enable_x64):
    assert not threads.threads_see_this_configuration()
    assert threads.workers(None) == 1 and threads.workers(3) == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_bad_worker_counts_are_refused(bad):
  with pytest.raises(ValueError, match="workers"):
    threads.workers(bad)
