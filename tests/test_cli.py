"""The `uniroute` command: the demo runs; bad input is one line and exit 2."""

import subprocess
import sys

import pytest

from uniroute_jax import cli


def test_demo_prints_the_comparison(capsys):
  assert cli.main(["demo", "--prompts", "800", "--llms", "6", "--seed", "3"]) == 0
  out, err = capsys.readouterr()
  for title in ("ZeroRouter", "K-NN", "UniRoute (K-means)", "Oracle (per prompt)"):
    assert title in out
  assert "Area(50%)" in out and "QNC" in out
  assert "[1]" in err  # progress goes to stderr


@pytest.mark.parametrize("argv, match", [
    (["demo", "--clusters", "0"], "--clusters: expected a positive integer, got 0"),
    (["demo", "--prompts", "abc"], "--prompts: expected a positive integer"),
    (["demo", "--llms", "2"], "num_models=2 is too few"),
    (["demo", "--prompts", "50", "--clusters", "40"], "--clusters must be at most the number of training prompts (30)"),
    (["demo", "--prompts", "100", "--neighbors", "11"], "--neighbors must be at most"),
    (["demo", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, match):
  assert cli.main(argv) == 2
  out, err = capsys.readouterr()
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert match in lines[0]
  assert "Traceback" not in err


def test_module_entry_point_runs():
  result = subprocess.run([sys.executable, "-m", "uniroute_jax", "demo", "--clusters", "0"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0
  help_ = subprocess.run([sys.executable, "-m", "uniroute_jax", "demo", "--help"],
                         capture_output=True, text=True, timeout=120)
  assert help_.returncode == 0 and "--clusters" in help_.stdout
