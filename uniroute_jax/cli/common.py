"""What every command shares: argument types, output files, progress,
Ctrl-C and how errors and warnings are printed."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130   # 128 + SIGINT, as shells report it

# The flag of each library argument a message may name (see
# checks.ArgumentError), so that errors speak the command line's language.
FLAGS = {
    "embeddings": "--embeddings", "costs": "--costs",
    "cost_column": "--cost-column", "score_column": "--score-column",
    "prompt_column": "--prompt-column", "model_column": "--model-column",
    "val_frac": "--val-frac", "test_frac": "--test-frac",
    "test_model_frac": "--test-llm-frac", "models": "--models",
    "num_clusters": "--clusters", "column": "--column",
    "id_column": "--id-column", "truncation": "--truncation",
    "max_length": "--max-length", "batch_size": "--batch-size",
    "cache": "--cache", "text_column": "--text-column",
    "representative_frac": "--representatives", "holdout_frac": "--holdout",
}


class UsageError(Exception):
  pass


class _StoreOnce(argparse.Action):
  """argparse's "store" that refuses a flag given twice: argparse would keep
  the last value, and a user who gave two meant one of them."""

  def __call__(self, parser, namespace, values, option_string=None):
    if option_string is not None:
      given = namespace.__dict__.setdefault("_flags_given", set())
      if self.dest in given:
        parser.error(f"argument {'/'.join(self.option_strings)}: given twice; "
                     "give it once")
      given.add(self.dest)
    setattr(namespace, self.dest, values)


class Parser(argparse.ArgumentParser):
  """An ArgumentParser whose errors are one line and exit 2, and whose flags
  take one value each (given twice, a flag is an error)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.register("action", None, _StoreOnce)
    self.register("action", "store", _StoreOnce)

  def error(self, message):  # argparse's hook
    raise UsageError(f"{self.prog}: error: {message}")


def positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
  return value


# features.EMPIRICAL_BAYES, spelled here so that parsing needs no JAX.
EMPIRICAL_BAYES = "empirical_bayes"


def prior_strength(text: str):
  """A number of pseudo-prompts, or 'empirical-bayes'."""
  if text.strip().lower().replace("_", "-") == "empirical-bayes":
    return EMPIRICAL_BAYES
  try:
    return nonnegative_float(text)
  except argparse.ArgumentTypeError:
    raise argparse.ArgumentTypeError(
        f"expected a non-negative number or 'empirical-bayes', got "
        f"{text!r}") from None


def fraction(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
  if not 0.0 < value < 1.0:
    raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {value}")
  return value


def seed(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = -1
  if not 0 <= value < 2 ** 32:   # what jax.random.key takes on every backend
    raise argparse.ArgumentTypeError(
        f"expected an integer in [0, 2**32), got {text!r}")
  return value


def nonnegative_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected a non-negative number, got {text!r}") from None
  if not 0.0 <= value < float("inf"):
    raise argparse.ArgumentTypeError(f"expected a non-negative number, got {value}")
  return value


def list_items(text: str, expected: str) -> list[str]:
  """The comma-separated items of a list flag. An empty item ("3,,5", "3,")
  is an error, as a typo is, and so is an item given twice: both would
  otherwise be dropped without a word."""
  items = [item.strip() for item in text.split(",")]
  if not all(items):
    raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
  repeated = next((i for i in items if items.count(i) > 1), None)
  if repeated is not None:
    raise argparse.ArgumentTypeError(f"names {repeated} twice, got {text!r}")
  return items


def lambda_list(text: str) -> tuple[float, ...]:
  try:
    # An empty item ("1,,2", "1,") is an error, not a lambda left out.
    values = tuple(float(v) for v in text.split(","))
  except ValueError:
    values = ()
  if not values or not all(v >= 0 and v < float("inf") for v in values):
    raise argparse.ArgumentTypeError(
        f"expected comma-separated non-negative numbers, got {text!r}")
  return values


def name_list(text: str) -> tuple[str, ...]:
  names = tuple(n.strip() for n in text.split(","))
  if not names or not all(names):
    raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
  return names


def real_path(path: str) -> str:
  """Where ``path`` is, links resolved (also in the folders of a file not
  written yet), so that two names of one file compare equal."""
  return os.path.realpath(path)


# The flags that name a file a command writes, and their attributes.
_OUTPUT_FLAGS = (("--out", "out"), ("--json", "json"), ("--plot", "plot"),
                 ("--plot-excess", "plot_excess"),
                 ("--plot-onboarding", "plot_onboarding"),
                 ("--plot-bound", "plot_bound"))


def output_flags(args) -> dict[str, str]:
  """{flag: path} of the files the command will write."""
  return {flag: getattr(args, name) for flag, name in _OUTPUT_FLAGS
          if getattr(args, name, None) is not None}


def memory_bytes() -> int | None:
  """This machine's physical memory, or None where it cannot be read."""
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (AttributeError, OSError, ValueError):
    return None


def fits_in_memory(flag: str, value, needed: int, what: str) -> None:
  """Refuses a size whose arrays would take more than half of this
  machine's memory: better a one-line error now than the process killed
  (or aborted by XLA) after minutes."""
  total = memory_bytes()
  if total is not None and needed > total / 2:
    raise ValueError(f"{flag} {value}: {what} would need about "
                     f"{needed / 2 ** 30:.1f} GiB, more than half of this "
                     f"machine's {total / 2 ** 30:.1f} GiB; give fewer")


def new_file(flag: str, path: str) -> None:
  """Fails before any work when ``path`` cannot be created."""
  if not path or path.endswith(("/", os.sep)) or os.path.isdir(path):
    raise ValueError(f"{flag}: expected the name of a new file, got {path!r}")
  if os.path.lexists(path):
    raise ValueError(f"{flag}: {path} already exists; it is never overwritten")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise ValueError(f"{flag}: folder {folder} does not exist")
  if not os.access(folder, os.W_OK | os.X_OK):
    raise ValueError(f"{flag}: folder {folder} is not writable")


def in_dtype(flag: str, values, dtype, advice: str, *,
             owner: str = "the router's"):
  """``values`` (non-negative numbers a flag gave) cast to ``dtype`` (of
  ``owner``: a router, the data); refused, naming the first, where one
  would round to 0 or to infinity there."""
  import numpy as np
  values = list(values)
  with np.errstate(over="ignore", under="ignore"):
    cast = np.asarray(values, dtype)
  lost = [given for given, value in zip(values, cast)
          if not np.isfinite(value) or (given > 0 and value == 0)]
  if lost:
    raise ValueError(
        f"{flag} {lost[0]!r} does not fit {owner} {np.dtype(dtype).name} "
        f"(from {np.finfo(dtype).smallest_subnormal:.1g} to "
        f"{np.finfo(dtype).max:.1g}); {advice}")
  return cast


def prior_strength_fits(value, dtype) -> None:
  """A number of pseudo-prompts given to --psi-prior-strength must be a
  number in the data's dtype too: 1e40 is infinite in float32, where every
  shrunk cluster error would be inf / inf."""
  if isinstance(value, (int, float)) and value > 0:
    in_dtype("--psi-prior-strength", [value], dtype,
             "give fewer pseudo-prompts (a strength of a few times the "
             "prompts per cluster already shrinks every cluster to the "
             "LLM's overall error)", owner="the data's")


def router_suffix(flag: str, path: str) -> None:
  """Router files are .npz archives, and named so."""
  if os.path.splitext(path)[1].lower() != ".npz":
    raise ValueError(f"{flag} must end in .npz (a router file), got {path}")


def write_new(flag: str, path: str, write=None, *, text: str | None = None
               ) -> None:
  """Writes a new file whole or not at all (never over an existing one):
  ``text``, or what ``write(binary file)`` writes."""
  from uniroute_jax import io
  stop_if_interrupted()
  try:
    if text is not None:
      io.atomic_write(path, lambda f: f.write(text), binary=False)
    else:
      io.atomic_write(path, write)
  except FileExistsError:
    raise ValueError(f"{flag}: {path} appeared while running; it is never "
                     f"overwritten") from None


def progress_printer(unit: str, *, quiet_up_to: int = 0):
  """``on_progress(done, total)`` printing each tenth on stderr (nothing
  for totals up to ``quiet_up_to``); it is also where a remembered Ctrl-C
  stops the work."""
  shown = [-1]

  def show(done: int, total: int) -> None:
    stop_if_interrupted()
    tenth = (10 * done) // total
    if tenth != shown[0] and total > quiet_up_to:
      shown[0] = tenth
      print(f"  {unit} {done}/{total}", file=sys.stderr, flush=True)

  return show


def one_line_warning(message, category, filename, lineno, file=None,
                      line=None) -> None:
  del category, filename, lineno, file, line
  print(f"uniroute: warning: {error_text(message)}", file=sys.stderr)


def error_text(err: Exception) -> str:
  """The first line of an error, naming flags where it names arguments."""
  render = getattr(err, "render", None)
  text = render(FLAGS.get) if callable(render) else str(err)
  return text.splitlines()[0] if text else type(err).__name__


# Ctrl-C raises KeyboardInterrupt wherever Python is; when that is a
# garbage-collector callback or a finaliser (JAX runs one on every
# collection), Python swallows it and goes on. So the interrupt is also
# remembered, and checked between trials and batches and before any output
# is written: the command still stops, writes nothing and exits 130.
interrupted = [False]


# The most the program keeps of compiled programs (the least recently used
# go first), and the shortest compilation worth keeping: JAX scans every
# entry when it writes one, so thousands of tiny ones would cost more than
# they save.
COMPILATION_CACHE_BYTES = 256 * 2**20
COMPILATION_CACHE_MIN_SECONDS = 0.1
_OFF = ("0", "false", "no", "off")


def compilation_cache_folder() -> str | None:
  """Where the ``uniroute`` program keeps XLA's compiled programs, so that
  the next command on data of the same shapes skips compiling them (most
  of a short command's time): ``xla/`` in the cache folder (``$UNIROUTE_CACHE``,
  else ``~/.cache/uniroute_jax``). None when the user set up a compilation
  cache of their own (``JAX_COMPILATION_CACHE_DIR``: it wins) or turned
  JAX's off (``JAX_ENABLE_COMPILATION_CACHE=false``), when
  ``UNIROUTE_COMPILATION_CACHE`` is 0 / false / no / off, when the folder
  cannot be written, or without the ``filelock`` package (in the ``text``
  extra), which JAX needs to keep the cache within its size."""
  import jax

  from uniroute_jax.encoder.cache import default_cache_path
  if (os.environ.get("UNIROUTE_COMPILATION_CACHE", "1").strip().lower() in _OFF
      or jax.config.jax_compilation_cache_dir
      or not jax.config.jax_enable_compilation_cache):
    return None
  try:
    import filelock  # noqa: F401
  except ImportError:
    return None
  folder = os.path.join(os.path.dirname(default_cache_path()), "xla")
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError:
    return None
  return folder if os.access(folder, os.W_OK) else None


def use_compilation_cache() -> None:
  """Turns on the cache of :func:`compilation_cache_folder`, if any, for
  every program this process compiles from now on. A damaged entry (a
  command killed while writing it) is compiled again, and JAX's warning
  about it is not shown: it changes no result (delete the folder to
  start afresh)."""
  import jax
  folder = compilation_cache_folder()
  if folder is None:
    return
  warnings.filterwarnings(
      "ignore", message=r"Error (reading|writing) persistent compilation cache")
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    COMPILATION_CACHE_MIN_SECONDS)
  jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_BYTES)


def on_interrupt(signum, frame) -> None:
  del signum, frame
  if interrupted[0]:
    return        # already stopping: a second Ctrl-C must not break cleanup
  interrupted[0] = True
  raise KeyboardInterrupt


def stop_if_interrupted() -> None:
  if interrupted[0]:
    raise KeyboardInterrupt


def quiet_when_interrupted(unraisable) -> None:
  """sys.unraisablehook: a swallowed Ctrl-C prints no traceback (it is
  remembered by the handler); anything else is reported as usual."""
  if not issubclass(unraisable.exc_type, KeyboardInterrupt):
    sys.__unraisablehook__(unraisable)


def llm_name_problem(text: str) -> str | None:
  """What keeps ``text`` from being an LLM name the commands can address
  (no surrounding spaces, no comma: commas separate --models and --name
  lists, no control character), or None."""
  if not text.strip():
    return "expected an LLM name, got an empty one"
  if text != text.strip() or "," in text or any(
      not ch.isprintable() for ch in text):
    return (f"expected an LLM name without surrounding spaces, commas or "
            f"control characters, got {text!r}")
  return None
