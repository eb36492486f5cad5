"""Test configuration: float64 available, strict rank promotion, shared helpers."""

import contextlib
import os
import shutil
import tempfile

# The tests run small arrays, where most of the time is XLA compiling. Two
# settings of XLA:CPU's code generation make programs compile faster and run
# slower, which small arrays do not notice: LLVM's lowest optimisation level
# (about 1.5x faster to compile) and the loop emitters in place of the MLIR
# fusion emitters (2 to 3x faster on the protocol's programs). Neither is
# meant to change what a program computes; `test_xla_flags.py` checks that
# results under them are those of XLA's defaults. One exception is known:
# with the two together, the matrix factorisation fitted with trials and
# ranks both vmapped keeps one fit's first-layer kernel from its last epoch
# instead of its best (either flag alone, or neither, keeps the best), so
# that comparison runs under XLA's defaults, in `test_xla_flags.py`. Set
# before JAX starts; inherited by the subprocesses some tests run. A user's
# own XLA_FLAGS that name a setting win.
TEST_XLA_FLAGS = {"--xla_backend_optimization_level": "0",
                  "--xla_cpu_use_fusion_emitters": "false"}
for _flag, _value in TEST_XLA_FLAGS.items():
  if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('XLA_FLAGS', '')} {_flag}={_value}".strip())

import jax  # noqa: E402
import numpy as np
import pytest

# float64 must be switched on before any array exists; tests pick their
# dtype explicitly, so float32 paths are exercised too.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

DTYPES = (np.float32, np.float64)
# Per-dtype tolerances for comparisons against float64 NumPy oracles.
RTOL = {np.float32: 2e-5, np.float64: 1e-10}


# Test modules free their compiled programs when they end (below), so a
# program several modules use is compiled again in each. A compilation cache
# on disk turns the repeats into reads: one per process that runs tests
# (each xdist worker has its own, so no two processes write one at once),
# inherited through the environment by the commands a test starts and waits
# for, and removed at the end; a folder left by a process that was killed is
# removed by the next run. A user's own cache wins.
_CACHE = "JAX_COMPILATION_CACHE_DIR"
_CACHE_PREFIX = "uniroute-jax-test-xla-"
_cache_folder = []


def _remove_orphaned_caches() -> None:
  for entry in os.scandir(tempfile.gettempdir()):
    if not entry.name.startswith(_CACHE_PREFIX):
      continue
    try:
      os.kill(int(entry.name[len(_CACHE_PREFIX):].split("-")[0]), 0)
    except ProcessLookupError:
      shutil.rmtree(entry.path, ignore_errors=True)
    except (ValueError, PermissionError):
      pass   # not ours, or a live process of another user


def pytest_configure(config):
  controller = (not hasattr(config, "workerinput")
                and config.getoption("numprocesses", None))
  if controller or os.environ.get(_CACHE):
    return
  _remove_orphaned_caches()
  folder = tempfile.mkdtemp(prefix=f"{_CACHE_PREFIX}{os.getpid()}-")
  _cache_folder.append(folder)
  os.environ[_CACHE] = folder
  # Every program, not only those that compiled for a second or more: the
  # suite's many small programs add up.
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_unconfigure(config):
  del config
  for folder in _cache_folder:
    shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(items):
  """The slow tests first (stably): started last, one of them would keep a
  worker busy while the other has nothing left to do."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
  return request.param


@pytest.fixture(params=["jit", "eager"])
def mode(request):
  """Runs a test body with JAX's jit on, then with it off (pure Python ops)."""
  if request.param == "eager":
    with jax.disable_jit():
      yield request.param
  else:
    yield request.param


def shared_data_dir():
  """The shared real-data folder, or None when it is absent."""
  path = os.environ.get("UNIROUTE_DATA") or os.path.join(
      os.path.dirname(__file__), "..", "..", "shared", "data")
  return path if os.path.isdir(path) else None


_traces = [0]


def _count_traces(event, duration, **kwargs):
  del duration, kwargs
  if event == "/jax/core/compile/jaxpr_trace_duration":
    _traces[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_traces)


@contextlib.contextmanager
def no_retrace():
  """Fails when any jitted function is traced (compiled anew) in the block:
  the calls inside must hit the compilation caches of earlier calls."""
  before = _traces[0]
  yield
  assert _traces[0] == before, f"{_traces[0] - before} new trace(s)"


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Frees each test module's compiled programs when it ends.

  XLA:CPU maps every compiled program's code into memory in several pieces,
  and one process may hold at most vm.max_map_count (65530) mappings: a
  suite that keeps all of its thousands of programs alive runs out of them.
  """
  yield
  jax.clear_caches()


@pytest.fixture(autouse=True)
def _private_embedding_cache(tmp_path_factory, monkeypatch):
  """The embedding cache of the tests, and of the commands they start, lives
  in the session's temporary folder, never in the user's cache."""
  monkeypatch.setenv("UNIROUTE_CACHE",
                     str(tmp_path_factory.getbasetemp() / "embedding_cache"))
