"""The `uniroute` command: demo and evaluate run; bad input is one line and exit 2."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import shared_data_dir
from uniroute_jax import cli

SMALL = ["--prompts", "700", "--llms", "6", "--trials", "2"]


@pytest.mark.slow
def test_demo_prints_the_comparison(capsys):
  assert cli.main(["demo", *SMALL, "--seed", "3"]) == 0
  out, err = capsys.readouterr()
  for title in ("ZeroRouter", "K-NN", "UniRoute (K-means)", "Oracle (per prompt)"):
    assert title in out
  assert "Area(50%)" in out and "QNC" in out
  assert "[1/3]" in err and "trials 2/2" in err  # progress goes to stderr


@pytest.mark.slow
def test_evaluate_writes_json_and_plot(tmp_path, capsys):
  out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
  out_excess = tmp_path / "excess.svg"
  argv = ["evaluate", "--format", "synthetic", *SMALL, "--methods",
          "zero,kmeans,mlp,oracle", "--json", str(out_json), "--plot", str(out_png),
          "--plot-excess", str(out_excess)]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "MLP (clairvoyant)" in out
  # Where the Area lost to the oracle goes, for the cluster routers only.
  split = out[out.index("Area lost to the per-prompt oracle"):].splitlines()
  assert [line.split()[0] for line in split[2:4]] == ["ZeroRouter", "UniRoute"]
  assert "<svg" in out_excess.read_text()
  doc = json.loads(out_json.read_text())
  assert set(doc["methods"]) == {"zero", "kmeans", "mlp", "oracle"}
  assert doc["methods"]["mlp"]["clairvoyant"] and doc["methods"]["mlp"]["reference"]
  assert not doc["methods"]["kmeans"]["clairvoyant"]
  for entry in doc["methods"].values():
    assert {"area", "area50", "qnc"} <= set(entry)
    assert len(entry["trial_area"]) == 2
  assert len(doc["methods"]["kmeans"]["chosen"]) == 2
  kmeans = doc["methods"]["kmeans"]
  assert len(kmeans["excess_risk"]["trials"]) == 2
  area_split = kmeans["excess_decomposition"]
  gap = np.mean(doc["methods"]["oracle"]["trial_area"]) - kmeans["area"]
  np.testing.assert_allclose(area_split["area_estimation"]
                             + area_split["area_approximation"], gap, atol=1e-6)
  assert "excess_decomposition" not in doc["methods"]["mlp"]
  assert doc["dataset"]["prompts"] == 700 and doc["trials"] == 2
  assert doc["wall_time_s"] > 0
  assert out_png.stat().st_size > 1000
  # Never overwritten: a second run refuses before doing any work.
  before = out_json.read_text()
  assert cli.main(argv) == 2
  assert "already exists" in capsys.readouterr().err
  assert out_json.read_text() == before


def test_evaluate_measures_the_onboarding_curve(tmp_path, capsys):
  out_json, out_png = tmp_path / "r.json", tmp_path / "onboarding.png"
  argv = ["evaluate", "--format", "synthetic", "--prompts", "300", "--llms",
          "6", "--trials", "2", "--methods", "kmeans",
          "--clusters", "4", "--psi-prior-strength", "empirical-bayes",
          "--onboarding-curve", "10,20,all", "--json",
          str(out_json), "--plot-onboarding", str(out_png)]
  assert cli.main(argv) == 0
  out, err = capsys.readouterr()
  table = out[out.index("How many prompts an unseen LLM"):].splitlines()
  assert table[1].split() == ["prompts", "random", "stratified", "neyman"]
  assert [row.split()[0] for row in table[2:5]] == ["10", "20", "all"]
  assert "[3/4] onboarding curve" in err and "[4/4] done" in err
  doc = json.loads(out_json.read_text())
  assert doc["methods"]["kmeans"]["area"] > 0
  curve = doc["onboarding_curve"]
  assert curve["sizes"] == [10, 20, curve["representatives"]]
  assert curve["clusters"] == [4] and curve["chosen"] == [4, 4]
  for name in ("random", "stratified", "neyman"):
    assert np.asarray(curve["selections"][name]["trials"]).shape == (2, 3)
  # Every representative gives one Psi, whatever the order.
  ends = {curve["selections"][n]["mean"][-1] for n in curve["selections"]}
  assert max(ends) - min(ends) < 1e-6
  assert out_png.stat().st_size > 1000


def test_evaluate_prints_prop2s_bound_against_k(tmp_path, capsys):
  out_json = tmp_path / "r.json"
  argv = ["evaluate", "--format", "synthetic", "--prompts", "250", "--llms",
          "5", "--trials", "1", "--methods", "zero", "--impurity-bound",
          "--json", str(out_json)]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  table = out[out.index("Prop. 2's bound"):out.index("Wrote")].splitlines()
  assert table[1].split() == ["K", "bound"]
  doc = json.loads(out_json.read_text())["impurity_bound"]
  assert doc["prompts"] == 250 and doc["clusters"][0] == 1
  assert len(doc["bound"]) == len(doc["clusters"]) == len(table) - 2
  # K = 1: every prompt against the LLMs' overall error, whatever k-means did.
  from uniroute_jax import make_synthetic, risk
  data = make_synthetic(jax.random.key(0), num_prompts=250, num_models=5)
  one = np.zeros(250, np.int32)
  smooth = risk.neighborhood_error(data.embeddings, data.loss,
                                   num_neighbors=doc["neighbors"],
                                   mask=data.mask)
  want = risk.impurity_bound(one, smooth.error, num_clusters=1).bound
  np.testing.assert_allclose(doc["bound"][0], float(want), rtol=1e-5)


def test_interrupting_a_run_prints_one_line_and_leaves_no_file(
    tmp_path, capsys, monkeypatch):
  """Ctrl-C while the evaluation runs or while a file is being written: one
  line, exit 130, and no output file (not even a partial one)."""
  from uniroute_jax import io, protocol
  out_json = tmp_path / "r.json"
  argv = ["evaluate", "--format", "synthetic", *SMALL, "--methods", "zero",
          "--json", str(out_json)]

  def interrupt(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(protocol, "evaluate", interrupt)
  message = "uniroute: interrupted; no partial file is left"
  assert cli.main(argv) == 130
  err = capsys.readouterr().err   # progress lines, then the one message
  assert err.splitlines()[-1] == message and "Traceback" not in err
  monkeypatch.undo()

  def write_then_interrupt(f):
    f.write('{"partial": ')
    raise KeyboardInterrupt

  real_atomic_write = io.atomic_write
  monkeypatch.setattr(io, "atomic_write", lambda path, write, **kw:
                      real_atomic_write(path, write_then_interrupt, **kw))
  assert cli.main(argv) == 130
  err = capsys.readouterr().err
  assert err.splitlines()[-1] == message and "Traceback" not in err
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, match", [
    (["demo", "--clusters", "0"], "--clusters: expected a positive integer, got 0"),
    (["demo", "--prompts", "abc"], "--prompts: expected a positive integer"),
    (["demo", "--llms", "2"], "2 LLMs are too few for the protocol"),
    (["demo", "--prompts", "50", "--clusters", "40"],
         "--clusters must be at most the 30 training prompts of a trial, got 40"),
        (["demo", "--prompts", "50", "--neighbors", "40"],
         "--neighbors must be at most the 5 validation prompts of a trial"),
        (["demo", "--psi-prior-strength", "-1"], "--psi-prior-strength: expected a non-negative"),
    (["demo", "--val-frac", "1.5"], "--val-frac: expected a number in (0, 1)"),
    (["demo", "--methods", "zero,magic"], "--methods: expected a comma-separated list"),
    (["demo", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice"),
    (["evaluate", "--format", "embedllm"], "--data is required with --format embedllm"),
    (["evaluate", "--format", "embedllm", "--data", "/no/such/dir"], "/no/such/dir"),
    (["evaluate", "--format", "routerbench", "--data", "/no/such.csv"], "/no/such.csv"),
    (["evaluate", "--format", "long", "--data", "x.csv", "--costs", "c.csv"],
     "not found: 'x.csv'"),
    (["evaluate", "--format", "csv", "--data", "x"], "invalid choice: 'csv'"),
    (["evaluate", "--format", "synthetic", "--json", "/no/such/dir/out.json"],
     "folder /no/such/dir does not exist"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, match):
  assert cli.main(argv) == 2
  out, err = capsys.readouterr()
  lines = [line for line in err.strip().splitlines() if not line.startswith("[")]
  assert len(lines) == 1, err
  assert match in lines[0]
  assert "Traceback" not in err


def test_malformed_files_exit_2(tmp_path, capsys):
  bad = tmp_path / "bad.csv"
  bad.write_text("sample_id,prompt,eval_name,gpt|total_cost\n1,hi,x,0.1\n")
  assert cli.main(["evaluate", "--format", "routerbench", "--data", str(bad)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 2 and "uniroute: error:" in err  # progress + one line


def test_module_entry_point_runs():
  result = subprocess.run([sys.executable, "-m", "uniroute_jax", "demo", "--clusters", "0"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0
  help_ = subprocess.run([sys.executable, "-m", "uniroute_jax", "evaluate", "--help"],
                         capture_output=True, text=True, timeout=120)
  assert help_.returncode == 0 and "--test-llm-frac" in help_.stdout


def test_commands_keep_compiled_programs_for_the_next_one(tmp_path):
  """A command leaves its compiled programs in xla/ beside the embedding
  cache (off with UNIROUTE_COMPILATION_CACHE=0); a cache the user set up
  wins and is left as it is."""
  from uniroute_jax import Router
  from uniroute_jax.cli import common
  x = np.asarray(jax.random.normal(jax.random.key(0), (40, 3)), np.float32)
  loss = (x[:, :2] > 0).astype(np.float32)
  router = Router(centroids=x[:3]).add_models(
      ["a", "b"], x, loss, np.array([1.0, 2.0], np.float32), warn_below=None)
  router.save(tmp_path / "r.npz")
  np.save(tmp_path / "p.npy", x[:5])
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  for off in ("1", "0"):
    cache = tmp_path / f"cache{off}"
    result = subprocess.run(
        [sys.executable, "-m", "uniroute_jax", "route", str(tmp_path / "r.npz"),
         str(tmp_path / "p.npy"), "--lambda", "0.1", "-o",
         str(tmp_path / f"out{off}.jsonl")],
        env=dict(env, UNIROUTE_CACHE=str(cache),
                 UNIROUTE_COMPILATION_CACHE=off),
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    programs = list((cache / "xla").glob("*")) if (cache / "xla").exists() else []
    assert bool(programs) == (off == "1"), programs
  # This session's own cache (set up by conftest.py) is the user's: kept.
  own = jax.config.jax_compilation_cache_dir
  assert own and common.compilation_cache_folder() is None
  common.use_compilation_cache()
  assert jax.config.jax_compilation_cache_dir == own


def test_compilation_cache_switches(tmp_path, monkeypatch):
  """Off when asked, for main() called from Python, and without filelock
  (JAX keeps a cache within its size only with it): commands then compile
  as they would without a cache, and never fail."""
  from uniroute_jax.cli import common
  monkeypatch.setenv("UNIROUTE_CACHE", str(tmp_path))
  own = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", None)   # nothing compiles here
  try:
    assert common.compilation_cache_folder() == str(tmp_path / "xla")
    for off in ("0", "off", "False"):
      monkeypatch.setenv("UNIROUTE_COMPILATION_CACHE", off)
      assert common.compilation_cache_folder() is None
    monkeypatch.delenv("UNIROUTE_COMPILATION_CACHE")
    # main() from a Python session leaves its JAX settings alone.
    assert cli.main(["models", str(tmp_path / "missing.npz")]) == 2
    assert jax.config.jax_compilation_cache_dir is None
    monkeypatch.setitem(sys.modules, "filelock", None)
    assert common.compilation_cache_folder() is None
  finally:
    jax.config.update("jax_compilation_cache_dir", own)


@pytest.mark.slow
@pytest.mark.parametrize("fmt, folder", [("embedllm", "mmlu_pro"),
                                         ("routerbench", "routerbench")])
def test_evaluate_on_the_shared_data(tmp_path, capsys, fmt, folder):
  root = shared_data_dir()
  if root is None:
    pytest.skip("shared data not found at ../shared/data (set UNIROUTE_DATA)")
  out_json = tmp_path / "out.json"
  argv = ["evaluate", "--format", fmt, "--data", os.path.join(root, folder),
          "--trials", "2", "--json", str(out_json)]
  if fmt == "routerbench":
    argv += ["--test-llm-frac", "0.5"]
  assert cli.main(argv) == 0
  doc = json.loads(out_json.read_text())
  assert doc["dataset"]["llms"] == (27 if fmt == "embedllm" else 11)
  for name in ("zero", "knn", "kmeans", "oracle"):
    assert 0.0 < doc["methods"][name]["area"] < 1.0


def test_fit_then_route(tmp_path, capsys):
  """The saved router is the Python API's fit_router; route writes one row
  per prompt and lambda with the chosen LLM, its cluster, every LLM's
  predicted loss and the cost, in CSV or JSONL; outputs are never
  overwritten."""
  import csv

  import jax
  import numpy as np
  from uniroute_jax import Router, fit_router, make_synthetic
  router_path, prompts = tmp_path / "r.npz", tmp_path / "p.npz"
  assert cli.main(["build-router", "--format", "synthetic", "--prompts", "300",
                   "--llms", "4", "--map", "kmeans", "--clusters", "4",
                   "--out", str(router_path)]) == 0
  out = capsys.readouterr().out
  assert "kmeans map with K = 4, fitted on 240 prompts; 4 LLMs" in out
  assert "represented on 60 representative prompts" in out
  assert "--lambda (loss per unit of cost) changes choices between" in out
  router = Router.load(router_path)
  data = make_synthetic(jax.random.key(0), num_prompts=300, num_models=4)
  expected = fit_router(jax.random.key(0), data, maps=("kmeans",),
                        clusters=(4,)).router
  np.testing.assert_array_equal(np.asarray(router.psi), np.asarray(expected.psi))
  assert router.representatives.ids == expected.representatives.ids
  x = make_synthetic(jax.random.key(1), num_prompts=50, num_models=4).embeddings[:9]
  ids = np.array([f"q{i}" for i in range(9)])
  np.savez(prompts, prompt_ids=ids, embeddings=x)
  pool = ["llm-00", "llm-01", "llm-03"]
  want = np.asarray(router.route(x, np.array([0.0, 50.0], router.dtype),
                                 models=pool).choice).ravel()
  gamma = np.asarray(router.predicted_loss(x))
  cluster = np.asarray(router.membership(x))
  for suffix in ("csv", "jsonl"):
    out = tmp_path / f"c.{suffix}"
    argv = ["route", str(router_path), str(prompts), "--lambda", "0,50",
            "--models", ",".join(pool), "-o", str(out)]
    assert cli.main(argv) == 0
    if suffix == "csv":
      rows = list(csv.DictReader(out.open()))
      assert list(rows[0]) == ["prompt_id", "lambda", "model", "cluster",
                               "predicted_loss", "cost"] + [
                                   f"predicted_loss:{m}" for m in pool]
      losses = [[float(r[f"predicted_loss:{m}"]) for m in pool] for r in rows]
    else:
      rows = [json.loads(line) for line in out.read_text().splitlines()]
      losses = [[r["predicted_losses"][m] for m in pool] for r in rows]
    assert len(rows) == 18 and [r["prompt_id"] for r in rows[:9]] == ids.tolist()
    assert [r["model"] for r in rows] == [router.models[j] for j in want]
    assert [int(r["cluster"]) for r in rows] == cluster.tolist() * 2
    np.testing.assert_allclose(
        losses, np.tile(gamma[:, [0, 1, 3]], (2, 1)), rtol=1e-5)
    np.testing.assert_allclose([float(r["cost"]) for r in rows],
                               np.asarray(router.cost)[want], rtol=1e-5)
    before = out.read_text()
    assert cli.main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == before


def test_route_at_a_budget_matches_a_brute_force_sweep(tmp_path, capsys):
  """--max-cost-per-prompt and --min-quality route at the lambda a sweep of
  lambdas would pick, and say what it predicts."""
  import jax
  import numpy as np
  from uniroute_jax import Router, make_synthetic
  router_path = tmp_path / "r.npz"
  assert cli.main(["fit", "--format", "synthetic", "--prompts", "300",
                   "--llms", "4", "--map", "kmeans", "--clusters", "4",
                   "--out", str(router_path)]) == 0
  router = Router.load(router_path)
  x = np.asarray(make_synthetic(jax.random.key(5), num_prompts=80,
                                num_models=4).embeddings)
  np.save(tmp_path / "p.npy", x)
  gamma, cost = np.asarray(router.predicted_loss(x)), np.asarray(router.cost)
  lambdas = np.concatenate([[0.0], np.geomspace(1e-3, 1e4, 4000)])
  choices = np.asarray(router.route(x, lambdas.astype(router.dtype)).choice)
  spent = cost[choices].mean(axis=1)
  quality = 1 - gamma[np.arange(x.shape[0])[None, :], choices].mean(axis=1)
  budget = float(np.quantile(spent, 0.5)) * 1.0001
  target = float(np.quantile(quality, 0.3)) - 1e-4
  capsys.readouterr()
  for flag, value in (("--max-cost-per-prompt", budget),
                      ("--min-quality", target)):
    out = tmp_path / f"{flag[2:]}.csv"
    assert cli.main(["route", str(router_path), str(tmp_path / "p.npy"),
                     flag, repr(value), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "meets it: predicted quality" in printed
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    got_cost = np.mean([float(r[5]) for r in rows])
    got_quality = 1 - np.mean([float(r[4]) for r in rows])
    if flag == "--max-cost-per-prompt":
      assert got_cost <= budget + 1e-6
      assert got_quality == pytest.approx(quality[spent <= budget].max(),
                                          abs=1e-5)
    else:
      assert got_quality >= target - 1e-6
      assert got_cost == pytest.approx(spent[quality >= target].min(),
                                       rel=1e-5)
  if cost.min() > 0:
    assert cli.main(["route", str(router_path), str(tmp_path / "p.npy"),
                     "--max-cost-per-prompt", "0", "-o",
                     str(tmp_path / "x.csv")]) == 2
    assert "is below the cheapest routing" in capsys.readouterr().err
  assert cli.main(["route", str(router_path), str(tmp_path / "p.npy"),
                   "--min-quality", "1", "-o", str(tmp_path / "y.csv")]) == 2
  assert "is above the best predicted quality" in capsys.readouterr().err


@pytest.mark.parametrize("extra, match", [
    (["--lambda", "-1"], "--lambda: expected comma-separated non-negative"),
    (["--models", "nope"], "not in the pool"),
])
def test_route_bad_input_is_one_line(tmp_path, capsys, extra, match):
  router_path = tmp_path / "r.npz"
  assert cli.main(["fit", "--map", "kmeans", "--format", "synthetic", "--prompts", "300",
                   "--llms", "4", "--clusters", "4", "--out", str(router_path)]) == 0
  import numpy as np
  np.save(tmp_path / "p.npy", np.zeros((3, 32), np.float32))
  capsys.readouterr()
  code = cli.main(["route", "--router", str(router_path), "--embeddings",
                   str(tmp_path / "p.npy"), "--out", str(tmp_path / "c.csv"), *extra])
  err = capsys.readouterr().err
  assert code == 2 and match in err and len(err.strip().splitlines()) == 1
  assert not (tmp_path / "c.csv").exists()


def test_fit_says_where_the_held_out_area_is_lost(tmp_path, capsys):
  assert cli.main(["fit", "--format", "synthetic", "--prompts", "300",
                   "--llms", "4", "--map", "kmeans", "--clusters", "3,6",
                   "--trials", "2", "--out", str(tmp_path / "r.npz")]) == 0
  line = next(l for l in capsys.readouterr().out.splitlines()
              if "Area lost to the per-prompt oracle" in l)
  gap, estimation, approximation = (
      float(v) for v in re.findall(r"-?\d+\.\d+", line)[:3])
  assert abs(gap - estimation - approximation) < 2e-4
  assert "--representatives, win back up to this" in line


def test_fit_with_a_learned_map(tmp_path, capsys):
  """--map learned saves the Python API's router: a softmax-dense map on the
  training prompts, soft Psi of every LLM on the representatives."""
  import jax
  import numpy as np
  from uniroute_jax import Router, fit_router, make_synthetic
  path = tmp_path / "r.npz"
  assert cli.main(["fit", "--format", "synthetic", "--prompts", "400",
                   "--llms", "4", "--clusters", "5", "--map", "learned",
                   "--seed", "2", "--out", str(path)]) == 0
  assert "learned map with K = 5" in capsys.readouterr().out
  saved = Router.load(path)
  data = make_synthetic(jax.random.key(2), num_prompts=400, num_models=4)
  expected = fit_router(jax.random.key(2), data, maps=("learned",),
                        clusters=(5,)).router
  assert saved.kind == "learned_map" and saved.models == expected.models
  np.testing.assert_array_equal(saved.predicted_loss(data.embeddings[:20]),
                                expected.predicted_loss(data.embeddings[:20]))


def _fitted(tmp_path, capsys, *extra):
  path = tmp_path / "r.npz"
  assert cli.main(["fit", "--format", "synthetic", "--prompts", "300",
                   "--llms", "4", "--map", "kmeans", "--clusters", "4",
                   *extra, "--out", str(path)]) == 0
  capsys.readouterr()
  return path


def test_pool_commands_onboard_list_and_retire(tmp_path, capsys):
  """representatives -> add-model (labels by id, extra and missing ones
  allowed) equals Router.onboard; models lists the pool; remove-model
  retires; edits never overwrite unless --replace."""
  import csv

  import numpy as np
  from uniroute_jax import Router
  # Plain cluster means, so that an LLM's table error is its mean loss.
  path = _fitted(tmp_path, capsys, "--psi-prior-strength", "0")
  router = Router.load(path)
  assert router.psi_prior is None
  reps = tmp_path / "reps.csv"
  assert cli.main(["representatives", str(path), "-o", str(reps)]) == 0
  rows = list(csv.DictReader(reps.open()))
  assert [r["prompt_id"] for r in rows] == list(router.representatives.ids)
  assert [int(r["cluster"]) for r in rows] == np.asarray(
      router.representatives.membership).tolist()
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 2, len(rows)).astype(float)
  labelled = rng.random(len(rows)) < 0.8
  with (tmp_path / "labels.csv").open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["prompt_id", "correct"])
    for r, s, keep in zip(rows, scores, labelled):
      if keep:
        writer.writerow([r["prompt_id"], int(s)])
    writer.writerow(["not-a-representative", 1])
  capsys.readouterr()
  new = tmp_path / "r2.npz"
  assert cli.main(["add-model", str(path), "--name", "new-llm", "--cost", "0.5",
                   "--labels", str(tmp_path / "labels.csv"), "-o", str(new)]) == 0
  out = capsys.readouterr().out
  assert f"on {int(labelled.sum())} of {len(rows)} representative prompts" in out
  assert "1 label(s) of prompts that are not representatives" in out
  want = router.onboard(["new-llm"], (1 - scores)[:, None], [0.5],
                        mask=labelled[:, None])
  got = Router.load(new)
  assert got.models == want.models
  np.testing.assert_array_equal(np.asarray(got.psi), np.asarray(want.psi))
  np.testing.assert_array_equal(np.asarray(got.counts), np.asarray(want.counts))
  assert cli.main(["models", str(new)]) == 0
  table = capsys.readouterr().out.splitlines()
  line = next(l for l in table if l.startswith("new-llm "))
  assert f"{(1 - scores)[labelled].mean():.4f}" in line
  assert f"{int(labelled.sum())}" in line.split()
  assert "as plain cluster means (the paper's eq. 13)" in table[-1]
  # Never overwritten unless asked.
  for argv, match in (
      (["add-model", str(path), "--name", "x", "--cost", "1", "--labels",
        str(tmp_path / "labels.csv"), "-o", str(new)], "already exists"),
      (["add-model", str(path), "--name", "x", "--cost", "1", "--labels",
        str(tmp_path / "labels.csv"), "-o", str(path)], "already exists"),
      (["add-model", str(new), "--name", "new-llm", "--cost", "1", "--labels",
        str(tmp_path / "labels.csv"), "-o", str(tmp_path / "r3.npz")],
       "'new-llm' is already in the pool"),
      (["remove-model", str(new), "--name", "nope", "-o",
        str(tmp_path / "r3.npz")], "--name 'nope' is not in the pool"),
      (["add-model", str(path), "--name", "x", "--cost", "1", "--labels",
        str(reps), "-o", str(tmp_path / "r3.npz")], "has no score column"),
  ):
    before = path.read_bytes()
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert path.read_bytes() == before and not (tmp_path / "r3.npz").exists()
  assert cli.main(["remove-model", str(new), "--name", "llm-00,new-llm",
                   "--replace"]) == 0
  assert Router.load(new).models == router.models[1:]


def test_add_model_and_models_report_one_error_under_shrinkage(tmp_path,
                                                               capsys):
  """With a shrinking Psi rule the labels' mean and the error routing uses
  differ: add-model reports both, and the second is what models lists."""
  import csv
  import re

  import numpy as np
  from uniroute_jax import Router
  path = _fitted(tmp_path, capsys, "--psi-prior-strength", "20")
  ids = Router.load(path).representatives.ids
  rng = np.random.default_rng(1)
  with (tmp_path / "labels.csv").open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["prompt_id", "correct"])
    writer.writerows([i, int(rng.random() < 0.3)] for i in ids)
  new = tmp_path / "r2.npz"
  assert cli.main(["add-model", str(path), "--name", "new-llm", "--cost", "0.5",
                   "--labels", str(tmp_path / "labels.csv"), "-o", str(new)]) == 0
  out = capsys.readouterr().out
  raw, routed = re.search(r"error (\S+) on .*, (\S+) as routed", out).groups()
  assert raw != routed
  assert cli.main(["models", str(new)]) == 0
  line = next(l for l in capsys.readouterr().out.splitlines()
              if l.startswith("new-llm "))
  assert line.split()[2] == routed


def test_routers_without_representatives_and_route_flag_misuse(tmp_path, capsys):
  import numpy as np
  from uniroute_jax import Router
  plain = tmp_path / "plain.npz"
  Router(centroids=np.eye(3, 32, dtype=np.float32)).add_psi(
      ["a", "b"], np.full((3, 2), 0.5), [1.0, 2.0]).save(plain)
  np.save(tmp_path / "p.npy", np.zeros((3, 32), np.float32))
  for argv, match in (
      (["representatives", str(plain), "-o", str(tmp_path / "x.csv")],
       "keeps no representative prompts"),
      (["add-model", str(plain), "--name", "c", "--cost", "1", "--labels",
        str(tmp_path / "p.npy"), "-o", str(tmp_path / "x.npz")],
       "keeps no representative prompts"),
      (["route", str(plain), str(tmp_path / "p.npy"), "--column", "text",
        "-o", str(tmp_path / "x.csv")], "--column applies to text INPUT"),
      (["route", str(plain), str(tmp_path / "p.npy"), "--truncation", "head",
        "-o", str(tmp_path / "x.csv")], "--truncation applies to text INPUT"),
      (["route", str(plain), str(tmp_path / "p.npy"), "-o",
        str(tmp_path / "x.txt")], "--out must end in .jsonl or .csv"),
      (["route", str(plain), str(tmp_path / "p.xlsx"), "-o",
        str(tmp_path / "x.csv")], "INPUT must end in one of"),
      (["route", str(plain), str(tmp_path / "p.npy"), "--embeddings",
        str(tmp_path / "p.npy"), "-o", str(tmp_path / "x.csv")],
       "give the prompts once"),
      (["route", str(plain), str(tmp_path / "p.npy"), "--lambda", "1",
        "--min-quality", "0.5", "-o", str(tmp_path / "x.csv")],
       "not allowed with argument"),
      (["route", str(plain), str(tmp_path / "p.npy"), "--min-quality", "1.5",
        "-o", str(tmp_path / "x.csv")], "expected a number in [0, 1]"),
  ):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
  assert not list(tmp_path.glob("x.*"))
  # The old spelling still routes.
  assert cli.main(["route", "--router", str(plain), "--embeddings",
                   str(tmp_path / "p.npy"), "--out", str(tmp_path / "c.csv")]) == 0


def test_evaluate_on_the_fixed_pool(tmp_path, capsys):
  import json as json_module
  out = tmp_path / "e.json"
  assert cli.main(["evaluate", "--format", "synthetic", "--prompts", "400",
                   "--llms", "4", "--trials", "2", "--methods", "zero,oracle",
                   "--fixed-pool", "--json", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "all 4 LLMs, seen in training" in printed
  doc = json_module.loads(out.read_text())
  assert doc["dataset"]["fixed_pool"] is True
  assert cli.main(["evaluate", "--format", "synthetic", "--prompts", "400",
                   "--llms", "4", "--trials", "1", "--methods", "zero",
                   "--fixed-pool", "--test-llm-frac", "0.5"]) == 2
  assert "--test-llm-frac does not apply with --fixed-pool" in capsys.readouterr().err


def test_hostile_pool_edits_and_budgets(tmp_path, capsys):
  """Names the other commands could not address, costs that round away,
  a traffic log as labels, read-only or linked routers, budgets a hair
  from the cheapest routing, and fit flags that would be ignored."""
  import csv
  import os

  import numpy as np
  from uniroute_jax import Router
  # Plain cluster means: an LLM right on every prompt has Psi exactly 0.
  path = _fitted(tmp_path, capsys, "--psi-prior-strength", "0")
  router = Router.load(path)
  ids = router.representatives.ids
  log = tmp_path / "log.csv"
  with log.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["prompt_id", "model", "correct"])
    for i in ids:
      writer.writerow([i, "new-llm", 1])
      writer.writerow([i, "other-llm", 0])
  out = lambda name: str(tmp_path / name)

  def fails(argv, match):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err

  add = ["add-model", path, "--cost", "1", "--labels", log]
  for name in (" llm-00 ", "a,b", "x\ny", "  "):
    fails([*add, "--name", name, "-o", out("n.npz")], "--name")
  tiny_cost = ["add-model", path, "--cost", "1e-60", "--labels", log]
  fails([*tiny_cost, "--name", "z", "-o", out("n.npz")],
        "--cost 1e-60 does not fit the router's float32")
  fails([*add, "--name", "z", "-o", out("n.csv")], "--out must end in .npz")
  fails([*add, "--name", "nobody", "-o", out("n.npz")],
        "has no row whose column 'model' is --name 'nobody'")
  # The same log with its LLM column named otherwise: never pooled.
  renamed = tmp_path / "renamed.csv"
  renamed.write_text(log.read_text().replace("prompt_id,model,", "prompt_id,llm,",
                                             1))
  fails([*add[:-1], renamed, "--name", "new-llm", "-o", out("n.npz")],
        "its column 'llm' holds 2 names: if it is the LLM of each row, say so "
        "with --model-column llm")
  assert cli.main([*map(str, add[:-1]), str(renamed), "--model-column", "llm",
                   "--name", "new-llm", "-o", out("renamed.npz")]) == 0
  assert cli.main([*map(str, add), "--name", "new-llm", "-o", out("n.npz")]) == 0
  capsys.readouterr()
  added = Router.load(out("n.npz"))
  np.testing.assert_array_equal(np.asarray(added.psi)[:, -1], 0.0)  # its rows only
  np.testing.assert_array_equal(np.asarray(Router.load(out("renamed.npz")).psi),
                                np.asarray(added.psi))
  fails(["remove-model", path, "--name", "llm-00,llm-00", "-o", out("m.npz")],
        "--name names 'llm-00' twice")
  # --replace refuses a read-only router and writes through a link.
  os.chmod(out("n.npz"), 0o444)
  before = open(out("n.npz"), "rb").read()
  fails(["remove-model", out("n.npz"), "--name", "llm-00", "--replace"],
        "is read-only")
  assert open(out("n.npz"), "rb").read() == before
  os.chmod(out("n.npz"), 0o640)
  os.symlink(out("n.npz"), out("link.npz"))
  assert cli.main(["remove-model", out("link.npz"), "--name", "llm-00",
                   "--replace"]) == 0
  assert os.path.islink(out("link.npz"))
  assert Router.load(out("n.npz")).models == ("llm-01", "llm-02", "llm-03",
                                              "new-llm")
  assert os.stat(out("n.npz")).st_mode & 0o777 == 0o640
  # A budget a hair below the cheapest routing is refused, in float64.
  np.save(tmp_path / "p.npy", np.asarray(router.representatives.embeddings))
  cheapest = float(np.asarray(router.cost, np.float64).min())
  fails(["route", path, tmp_path / "p.npy", "--max-cost-per-prompt",
         repr(cheapest * (1 - 1e-9)), "-o", out("d.csv")],
        "is below the cheapest routing")
  assert cli.main(["route", str(path), str(tmp_path / "p.npy"),
                   "--max-cost-per-prompt", repr(cheapest), "-o",
                   out("d.csv")]) == 0
  spent = [float(r["cost"]) for r in csv.DictReader(open(out("d.csv")))]
  assert np.mean(np.asarray(spent, np.float64)) <= cheapest * (1 + 1e-6)
  capsys.readouterr()
  # fit flags that nothing would use are errors.
  base = ["fit", "--format", "synthetic", "--prompts", "300", "--llms", "4",
          "--map", "kmeans", "--clusters", "4"]
  fails([*base, "--trials", "9", "--out", out("f.npz")],
        "--trials applies only when fit chooses")
  fails([*base, "--holdout", "0.3", "--out", out("f.npz")],
        "--holdout applies only when fit chooses")
  fails(["example", ""], "FOLDER: expected the name of a folder")
  os.symlink(out("nowhere"), out("dangling"))
  fails(["example", out("dangling")], "exists and is not a folder")


def test_cluster_and_prior_flags_serve_the_onboarding_curve_alone(capsys):
  argv = ["demo", "--prompts", "200", "--llms", "4", "--trials", "1",
          "--methods", "zero", "--clusters", "3", "--psi-prior-strength", "2",
          "--onboarding-curve", "5,all"]
  assert cli.main(argv) == 0
  assert "How many prompts an unseen LLM" in capsys.readouterr().out


def test_the_psi_prior_flag_sets_each_routers_own_option():
  from uniroute_jax.cli import _build_parser
  from uniroute_jax.cli import evaluate as command
  parse = lambda *a: _build_parser()[0].parse_args(
      ["demo", "--methods", "zero,kmeans,learned_map", *a])
  methods = command._methods(parse("--psi-prior-strength", "Empirical-Bayes"))
  assert [getattr(m, "empirical_bayes", None) for m in methods] == [None, True,
                                                                     True]
  methods = command._methods(parse("--psi-prior-strength", "2.5"))
  assert [getattr(m, "prior_strength", None) for m in methods] == [None, 2.5, 2.5]
  assert not any(getattr(m, "empirical_bayes", False) for m in methods)


def test_representatives_first_n_in_a_spread_order(tmp_path, capsys):
  """--first N writes the N representatives a new LLM should be run on
  first (Router.labelling_order), spread over the clusters."""
  import csv

  import jax
  from uniroute_jax import Router
  path = _fitted(tmp_path, capsys)
  router = Router.load(path)
  out = tmp_path / "first.csv"
  assert cli.main(["representatives", str(path), "-o", str(out), "--first",
                   "12", "--order", "stratified", "--seed", "3"]) == 0
  assert "the first 12 of" in capsys.readouterr().out
  rows = list(csv.DictReader(out.open()))
  order = np.asarray(router.labelling_order(jax.random.key(3),
                                            selection="stratified"))[:12]
  assert [r["prompt_id"] for r in rows] == [router.representatives.ids[i]
                                            for i in order]
  clusters = np.asarray(router.representatives.membership)
  share = np.bincount(clusters, minlength=4) / clusters.size
  got = np.bincount([int(r["cluster"]) for r in rows], minlength=4)
  assert np.all(np.abs(got - 12 * share) <= 1)
  every = tmp_path / "all.txt"
  assert cli.main(["representatives", str(path), "-o", str(every), "--order",
                   "random"]) == 0
  ids = every.read_text().splitlines()
  assert sorted(ids) == sorted(router.representatives.ids)
  assert ids != list(router.representatives.ids)
  # A seed with nothing to order, and Neyman with no pool, are refused.
  for argv, match in (
      (["--seed", "5"], "--seed applies only with --first or --order"),
      (["--order", "neyman"], "has no LLM; use --order stratified or random")):
    source = path
    if "neyman" in argv:
      source = tmp_path / "empty.npz"
      router.remove_models(list(router.models)).save(source)
    assert cli.main(["representatives", str(source), "-o",
                     str(tmp_path / "x.csv"), *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "x.csv").exists()
