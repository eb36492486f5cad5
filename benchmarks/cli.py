"""The command line's wall time: the demo, and the README's walkthrough from a
traffic log to decisions, with and without the compilation cache.

Each command runs in a fresh process, as a user runs it, with its own empty
cache folder (``UNIROUTE_CACHE``). The walkthrough's commands are read from
README.md, so what is timed is what the README tells a user to type.
``fit`` and ``route`` are timed:

- without the compilation cache (``UNIROUTE_COMPILATION_CACHE=0``), the
  prompts' embeddings already cached: compilation plus the work;
- the first time with it, which compiles and writes the programs;
- again with it: the programs are read back instead of compiled.

The alternative a user would otherwise have is the first column: every run
compiles again. Each row is the median of ``--repeats`` runs. The script
checks that every run wrote the same decisions.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import _machine

REPO = pathlib.Path(__file__).resolve().parents[1]


def walkthrough() -> list[list[str]]:
  """The README's traffic-log commands, as argument lists."""
  text = (REPO / "README.md").read_text()
  section = text.split("## From a log of your traffic to routing decisions")[1]
  block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
  return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines()
          if line.startswith("uniroute ")]


def outputs(command: list[str]) -> list[str]:
  """The files a command writes (its -o / --out values)."""
  return [command[i + 1] for i, a in enumerate(command[:-1])
          if a in ("-o", "--out")]


def run(command: list[str], cwd: pathlib.Path, cache: pathlib.Path,
        compilation_cache: bool) -> float:
  # The command line never overwrites a file: each run writes afresh.
  for name in outputs(command):
    (cwd / name).unlink(missing_ok=True)
  env = dict(os.environ, UNIROUTE_CACHE=str(cache),
             UNIROUTE_COMPILATION_CACHE="1" if compilation_cache else "0")
  start = time.perf_counter()
  done = subprocess.run(command, cwd=cwd, env=env, capture_output=True,
                        text=True)
  seconds = time.perf_counter() - start
  if done.returncode != 0:
    sys.exit(f"{shlex.join(command)} failed ({done.returncode}):\n"
             f"{done.stderr[-2000:]}")
  return seconds


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  if shutil.which("uniroute") is None:
    sys.exit("the uniroute command is not installed (pip install -e .)")
  commands = {c[1]: c for c in walkthrough()}
  fit, route = commands["fit"], commands["route"]
  rows, failures = [], 0
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    demo_times = []
    for i in range(args.repeats):
      demo_times.append(run(["uniroute", "demo"], scratch,
                            scratch / f"demo-cache-{i}", True))
    print(f"demo: {demo_times}", flush=True)
    rows.append(("uniroute demo (empty cache)",
                 f"{statistics.median(demo_times):.1f}", "", ""))

    work = scratch / "walkthrough"
    work.mkdir()
    cache = scratch / "cache"
    run(commands["example"], work, cache, False)
    # Embeds the log's and the new prompts' text once, so that every timed
    # run below finds its embeddings cached and only compilation differs.
    run(fit, work, cache, False)
    run(route, work, cache, False)
    reference = (work / "decisions.jsonl").read_text()
    for name, command in (("fit", fit), ("route", route)):
      off, first, again = [], [], []
      for i in range(args.repeats):
        off.append(run(command, work, cache, False))
        shutil.rmtree(cache / "xla", ignore_errors=True)
        first.append(run(command, work, cache, True))
        again.append(run(command, work, cache, True))
        if name == "route" and (work / "decisions.jsonl").read_text() != reference:
          failures += 1
      print(f"{name}: off {off}, first {first}, cached {again}", flush=True)
      rows.append((f"uniroute {name} (embeddings cached)",
                   f"{statistics.median(off):.1f}",
                   f"{statistics.median(first):.1f}",
                   f"{statistics.median(again):.1f}"))
  lines = [
      "# The command line's wall time",
      "",
      "Each command in a fresh process (Python start, imports, compilation "
      "and the work), median of "
      f"{args.repeats} runs. The walkthrough is README.md's: "
      f"`{shlex.join(fit)}` and `{shlex.join(route)}` on the data "
      "`uniroute example` writes, with the prompts' embeddings already in "
      "the embedding cache. Seconds:",
      "",
      _machine.table(["command", "no compilation cache",
                      "compilation cache, first run",
                      "compilation cache, later runs"], rows),
      "",
      "- Every `route` run wrote the same decisions: "
      + ("yes." if not failures else f"NO ({failures} differed)."),
      "",
  ]
  _machine.finish("benchmarks/cli.py", argv, lines, args.out)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
