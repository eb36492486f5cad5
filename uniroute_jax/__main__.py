from uniroute_jax.cli import run

run()
