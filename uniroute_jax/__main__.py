import sys

from uniroute_jax.cli import main

sys.exit(main())
