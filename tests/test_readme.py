"""The README's Python example runs as written."""

import pathlib
import re


def test_readme_python_example_runs(capsys):
  text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert blocks, "README.md has no Python example"
  namespace = {}  # the blocks build on each other, as a reader runs them
  for block in blocks:
    exec(compile(block, "README.md", "exec"), namespace)
  out = capsys.readouterr().out
  assert "DeferralMetrics" in out and "UniRoute (K-means)" in out
