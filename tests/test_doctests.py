"""The examples in the public docstrings run and print what they say."""

import doctest
import importlib
import pkgutil

import pytest

import uniroute_jax

MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(uniroute_jax.__path__, "uniroute_jax.")
    if not name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0
