import os
import sys

from uniroute_jax.cli import EXIT_INTERRUPTED, main

code = main()
if code == EXIT_INTERRUPTED:
  # A Ctrl-C that crossed an exec() (as namedtuple and dataclass creation do
  # while JAX is imported) leaves CPython's "unhandled KeyboardInterrupt"
  # flag set even though the command handled it; under `python -m` the
  # interpreter would then kill itself with SIGINT at exit instead of
  # returning 130. Everything is written and cleaned up by now.
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)
sys.exit(code)
