"""Machine description, timing and Markdown tables shared by the benchmarks.

Benchmark numbers mean little without the machine they came from, so every
report ends with the same section: CPU, devices, library versions, the BLAS
and OpenMP pools scikit-learn and NumPy run on, and the environment variables
that change how those pools behave.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Callable, Sequence

# Variables that change BLAS / OpenMP / XLA behaviour. They are reported, never
# set: the benchmarks must measure the environment they are run in.
_ENV_VARS = (
    "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "JAX_PLATFORMS",
    "JAX_ENABLE_X64",
)


def _cpu_model() -> str:
  # platform.processor() is empty on many Linux systems; /proc/cpuinfo is not.
  name = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return f"{line.split(':', 1)[1].strip()} (platform.processor: {name!r})"
  except OSError:
    pass
  return repr(name)


def _version(module: str) -> str:
  try:
    mod = __import__(module)
  except ImportError:
    return "not installed"
  return getattr(mod, "__version__", "unknown")


def _threadpools() -> list[str]:
  try:
    import threadpoolctl
  except ImportError:
    return ["threadpoolctl not installed"]
  # The pools are only visible once the libraries that load them are imported.
  import numpy  # noqa: F401
  try:
    import sklearn.cluster  # noqa: F401
  except ImportError:
    pass
  lines = []
  for pool in threadpoolctl.threadpool_info():
    extra = ", ".join(f"{key}={pool[key]}" for key in
                      ("internal_api", "version", "architecture",
                       "threading_layer") if pool.get(key))
    lines.append(f"{pool.get('user_api')}: {pool.get('num_threads')} threads, "
                 f"{extra}; {pool.get('filepath')}")
  return lines or ["no BLAS / OpenMP pools found"]


def _code_version() -> str:
  """The library's git commit, marked when the work tree differs from it,
  so that a result names the code that produced it."""
  import subprocess
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                            capture_output=True, text=True, timeout=10)
    # Results being rewritten are not code.
    changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no",
                              "--", ".", ":!benchmarks/results"],
                             cwd=root, capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return "unknown (no git)"
  if commit.returncode != 0:
    return "unknown (not a git checkout)"
  dirty = " plus uncommitted changes" if changes.stdout.strip() else ""
  return f"commit {commit.stdout.strip()}{dirty}"


def info() -> list[tuple[str, str]]:
  """(field, value) pairs describing this machine and software."""
  import jax
  rows = [
      ("code", _code_version()),
      ("cpu", _cpu_model()),
      ("os.cpu_count()", str(os.cpu_count())),
  ]
  if hasattr(os, "sched_getaffinity"):
    rows.append(("usable cores (affinity)", str(len(os.sched_getaffinity(0)))))
  if hasattr(os, "getloadavg"):
    # Other processes skew timings; the load says whether there were any.
    rows.append(("load average (1, 5, 15 min)",
                 ", ".join(f"{v:.2f}" for v in os.getloadavg())))
  try:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    rows.append(("memory", f"{pages / 2**30:.1f} GiB"))
  except (ValueError, OSError, AttributeError):
    pass
  rows += [
      ("platform", platform.platform()),
      ("python", sys.version.split()[0]),
      ("jax.devices()", str(jax.devices())),
      ("jax / jaxlib", f"{jax.__version__} / {_version('jaxlib')}"),
      ("numpy", _version("numpy")),
      ("scikit-learn", _version("sklearn")),
  ]
  for var in _ENV_VARS:
    if var in os.environ:
      rows.append((f"${var}", os.environ[var]))
  for line in _threadpools():
    rows.append(("threadpool", line))
  return rows


def markdown_section(title: str = "Machine") -> str:
  """The machine description as a Markdown section."""
  lines = [f"## {title}", ""]
  lines += [f"- {key}: {value}" for key, value in info()]
  return "\n".join(lines) + "\n"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """A Markdown table with padded columns, so it also reads well in a terminal."""
  cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

  def line(row):
    return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

  out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
  out += [line(row) for row in cells[1:]]
  return "\n".join(out) + "\n"


def best_time(fn: Callable[[], object], repeats: int,
              block: Callable[[object], object] | None = None
              ) -> tuple[float, object]:
  """Best wall time of ``repeats`` calls of ``fn`` and the last call's result.

  ``block`` (e.g. ``jax.block_until_ready``) runs inside the timed region:
  JAX dispatches asynchronously, so without it only the dispatch is timed.
  The best, not the mean, is reported because interference from other
  processes only ever adds time.
  """
  best, out = float("inf"), None
  for _ in range(max(1, repeats)):
    start = time.perf_counter()
    out = fn()
    if block is not None:
      out = block(out)
    best = min(best, time.perf_counter() - start)
  return best, out


def write(path: str | None, text: str) -> None:
  """Writes ``text`` to ``path`` (creating folders) when a path is given."""
  if not path:
    return
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  print(f"wrote {path}")


def finish(script: str, argv, lines: Sequence[str], out: str | None) -> str:
  """Appends the machine and the command line to a report, prints and saves it."""
  command = [script] + (sys.argv[1:] if argv is None else list(argv))
  report = "\n".join([*lines, markdown_section(),
                      "Command: `python " + " ".join(command) + "`", ""])
  print()
  print(report)
  write(out, report)
  return report


def data_root(subfolder: str = "") -> str | None:
  """The shared data folder ($UNIROUTE_DATA, else ../shared/data beside the
  repository), or None when it, or ``subfolder`` inside it, is absent."""
  root = os.environ.get("UNIROUTE_DATA") or os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
  return root if os.path.isdir(os.path.join(root, subfolder)) else None


def load_mmlu_pro():
  """The shared MMLU-Pro data (EmbedLLM layout), or None after saying it is
  absent."""
  root = data_root("mmlu_pro")
  if root is None:
    print("the shared MMLU-Pro data is absent (../shared/data or $UNIROUTE_DATA)")
    return None
  from uniroute_jax.data import load_embedllm
  return load_embedllm(os.path.join(root, "mmlu_pro"))
