"""Compiled calls from several host threads at once, results in order.

On a CPU one compiled call leaves a core idle through its sorts, top-k,
small ops and loop control; a second call from another thread fills it
(the protocol's trial batches and the encoder's; see
benchmarks/results/). The results do not depend on it: each call is the
same compiled program on the same inputs.

JAX's option contexts (``jax.enable_x64``, ``jax.default_device``, ...)
are thread-local, so a call from a worker thread inside one would trace
another program: :func:`workers` then answers 1.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
from typing import Callable, Iterator, Sequence

import jax

from uniroute_jax import checks


def _configuration() -> dict:
  """Every JAX option as this thread sees it."""
  seen = {}
  for name in jax.config.values:
    try:
      seen[name] = getattr(jax.config, name)
    except AttributeError:
      pass
  return seen


def threads_see_this_configuration() -> bool:
  """True when a new thread sees the JAX options this one does (False
  inside a thread-local option context)."""
  here = _configuration()
  probe = concurrent.futures.ThreadPoolExecutor(1)
  try:
    there = probe.submit(_configuration).result()
  finally:
    probe.shutdown()
  return here == there


def workers(requested: int | None) -> int:
  """How many threads to run calls from: ``requested`` (a positive int),
  or by default 2 on a CPU and 1 on accelerators (which run one program
  at a time); 1 whenever new threads would not see this thread's JAX
  options."""
  count = (2 if jax.default_backend() == "cpu" else 1) if requested is None \
      else checks.positive_int("workers", requested)
  if count > 1 and not threads_see_this_configuration():
    return 1
  return count


def in_order(fn: Callable, items: Sequence, count: int) -> Iterator:
  """``fn`` over ``items`` from up to ``count`` threads, yielded in order.

  Each call runs in a copy of the caller's context variables (e.g. the
  checking state of :func:`uniroute_jax.checks.checked`). On an error or
  an interrupt, the calls not yet started are dropped.
  """
  if count == 1 or len(items) < 2:
    yield from map(fn, items)
    return
  pool = concurrent.futures.ThreadPoolExecutor(count)
  try:
    futures = [pool.submit(contextvars.copy_context().run, fn, item)
               for item in items]
    for future in futures:
      yield future.result()
  finally:
    pool.shutdown(wait=False, cancel_futures=True)
