"""The ``uniroute`` command line. Parses arguments, prints, sets exit codes.

One module a command, in the order a user meets them: ``embed`` (prompt
text to embeddings), ``fit`` (a router for one's own pool), ``route``
(decisions for new prompts), ``pool`` (``models``, ``representatives``,
``add-model``, ``remove-model``) and ``evaluate`` (``demo``, ``evaluate``:
the paper's protocol). ``inputs`` and ``encoding`` hold the data and
encoder flags the commands share, ``common`` the rest.

Errors a user can fix (bad flags, missing files, malformed data) print one
line naming the flag or the file and exit 2; warnings print one line each.
A flag that does not apply to the chosen format or routers is an error,
never silently dropped. Output files are checked before any work, written
whole or not at all, and never overwritten unless asked.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings

from uniroute_jax.cli import common
from uniroute_jax.cli.common import EXIT_INTERRUPTED, FLAGS

__all__ = ["EXIT_INTERRUPTED", "FLAGS", "main", "run"]


def _build_parser():
  # Imported here: the command modules import the protocol, hence JAX, and
  # the program must catch Ctrl-C and print usage errors before that.
  from uniroute_jax.cli import embed, evaluate, fit, pool, route
  parser = common.Parser(prog="uniroute",
                         description="Universal LLM routing (UniRoute) in JAX.")
  commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                   parser_class=common.Parser)
  evaluate.add_parsers(commands)
  embed.add_parser(commands)
  fit.add_parser(commands)
  route.add_parser(commands)
  pool.add_parsers(commands)
  handlers = {"demo": evaluate.run_demo, "evaluate": evaluate.run_evaluate,
              "embed": embed.run, "fit": fit.run, "build-router": fit.run,
              "route": route.run, "models": pool.run_models,
              "representatives": pool.run_representatives,
              "add-model": pool.run_add_model, "example": pool.run_example,
              "remove-model": pool.run_remove_model}
  return parser, handlers


def main(argv=None, *, compilation_cache: bool = False) -> int:
  """Runs the command line on ``argv`` (default ``sys.argv[1:]``) and
  returns its exit status.

  ``compilation_cache``: keep compiled programs on disk for the next
  command (:func:`common.use_compilation_cache`), as the ``uniroute``
  program does; off by default, so that a Python session calling this
  keeps its own JAX settings.
  """
  common.interrupted[0] = False
  previous_hook = sys.unraisablehook
  sys.unraisablehook = common.quiet_when_interrupted
  try:
    previous_handler = signal.signal(signal.SIGINT, common.on_interrupt)
  except ValueError:          # not the main thread: signals stay as they are
    previous_handler = None
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings("always", module="uniroute_jax")
      warnings.showwarning = common.one_line_warning
      return _main(argv, compilation_cache)
  finally:
    sys.unraisablehook = previous_hook
    if previous_handler is not None:
      signal.signal(signal.SIGINT, previous_handler)


def _main(argv, compilation_cache: bool) -> int:
  try:
    code = _command(argv, compilation_cache)
    common.stop_if_interrupted()
    return code
  except common.UsageError as err:
    print(str(err), file=sys.stderr)
    return common.EXIT_USAGE
  except BrokenPipeError:
    # The reader (e.g. `| head`) stopped reading: not an error of the input.
    # Further writes to the closed pipe are sent nowhere.
    try:
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
      pass   # a stdout without a descriptor (e.g. captured): nothing to flush
    return 0
  except (ValueError, OSError, ImportError) as err:
    print(f"uniroute: error: {common.error_text(err)}", file=sys.stderr)
    return common.EXIT_USAGE
  except KeyboardInterrupt:
    # Outputs are written whole or not at all, so nothing partial is left.
    print("uniroute: interrupted; no partial file is left", file=sys.stderr)
    return EXIT_INTERRUPTED


def _command(argv, compilation_cache: bool) -> int:
  parser, handlers = _build_parser()
  args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return common.EXIT_USAGE
  if compilation_cache:
    # After parsing (--help imports no JAX) and inside the Ctrl-C handling:
    # turning the cache on imports JAX.
    common.use_compilation_cache()
  return handlers[args.command](args)


def run() -> None:
  """The ``uniroute`` program: :func:`main`, then exit with its status.

  After a Ctrl-C the process ends at once (everything is written and cleaned
  up by then): an interrupt that landed in an XLA compilation or crossed an
  exec() can leave the interpreter's teardown to crash or to re-raise
  SIGINT, which would turn the promised status 130 into 139 or -2.

  The program keeps compiled programs on disk for the next command
  (``main(compilation_cache=True)``).
  """
  code = main(compilation_cache=True)
  if code == EXIT_INTERRUPTED:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)
