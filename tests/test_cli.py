"""The `uniroute` command: demo and evaluate run; bad input is one line and exit 2."""

import json
import os
import subprocess
import sys

import pytest

from conftest import shared_data_dir
from uniroute_jax import cli

SMALL = ["--prompts", "700", "--llms", "6", "--trials", "2"]


def test_demo_prints_the_comparison(capsys):
  assert cli.main(["demo", *SMALL, "--seed", "3"]) == 0
  out, err = capsys.readouterr()
  for title in ("ZeroRouter", "K-NN", "UniRoute (K-means)", "Oracle (per prompt)"):
    assert title in out
  assert "Area(50%)" in out and "QNC" in out
  assert "[1/3]" in err and "trials 2/2" in err  # progress goes to stderr


def test_evaluate_writes_json_and_plot(tmp_path, capsys):
  out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
  argv = ["evaluate", "--format", "synthetic", *SMALL, "--methods",
          "zero,kmeans,mlp,oracle", "--json", str(out_json), "--plot", str(out_png)]
  assert cli.main(argv) == 0
  assert "MLP (clairvoyant)" in capsys.readouterr().out
  doc = json.loads(out_json.read_text())
  assert set(doc["methods"]) == {"zero", "kmeans", "mlp", "oracle"}
  assert doc["methods"]["mlp"]["clairvoyant"] and doc["methods"]["mlp"]["reference"]
  assert not doc["methods"]["kmeans"]["clairvoyant"]
  for entry in doc["methods"].values():
    assert {"area", "area50", "qnc"} <= set(entry)
    assert len(entry["trial_area"]) == 2
  assert len(doc["methods"]["kmeans"]["chosen"]) == 2
  assert doc["dataset"]["prompts"] == 700 and doc["trials"] == 2
  assert doc["wall_time_s"] > 0
  assert out_png.stat().st_size > 1000
  # Never overwritten: a second run refuses before doing any work.
  before = out_json.read_text()
  assert cli.main(argv) == 2
  assert "already exists" in capsys.readouterr().err
  assert out_json.read_text() == before


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
    (["evaluate", "--format", "long", "--data", "x.csv"], "--embeddings is required"),
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


def test_build_router_then_route(tmp_path, capsys):
  """The saved router routes like the Python API; the CSV has one row per
  prompt and lambda; outputs are never overwritten."""
  import jax
  import numpy as np
  from uniroute_jax import Router, make_synthetic
  router_path, prompts, out = (tmp_path / "r.npz", tmp_path / "p.npz",
                               tmp_path / "c.csv")
  assert cli.main(["build-router", "--format", "synthetic", "--prompts", "600",
                   "--llms", "5", "--clusters", "8", "--out", str(router_path)]) == 0
  assert "kmeans map with 8 clusters of 600 prompts, 5 LLMs" in capsys.readouterr().out
  router = Router.load(router_path)
  data = make_synthetic(jax.random.key(0), num_prompts=600, num_models=5)
  assert router.models == tuple(data.model_names) and router.num_clusters == 8
  x = make_synthetic(jax.random.key(1), num_prompts=50, num_models=5).embeddings[:9]
  ids = np.array([f"q{i}" for i in range(9)])
  np.savez(prompts, prompt_ids=ids, embeddings=x)
  argv = ["route", "--router", str(router_path), "--embeddings", str(prompts),
          "--lambda", "0,50", "--models", "llm-01,llm-03,llm-04", "--out", str(out)]
  assert cli.main(argv) == 0
  lines = out.read_text().splitlines()
  assert lines[0] == "prompt_id,lambda,model,predicted_loss" and len(lines) == 19
  expected = router.route(x, np.array([0.0, 50.0], router.dtype),
                          models=["llm-01", "llm-03", "llm-04"]).choice
  got = [line.split(",") for line in lines[1:]]
  assert [row[0] for row in got[:9]] == ids.tolist()
  assert [row[2] for row in got] == [router.models[j] for j in
                                     np.asarray(expected).ravel()]
  before = out.read_text()
  assert cli.main(argv) == 2
  assert "already exists" in capsys.readouterr().err
  assert out.read_text() == before


@pytest.mark.parametrize("extra, match", [
    (["--lambda", "-1"], "--lambda: expected comma-separated non-negative"),
    (["--models", "nope"], "not in the pool"),
])
def test_route_bad_input_is_one_line(tmp_path, capsys, extra, match):
  router_path = tmp_path / "r.npz"
  assert cli.main(["build-router", "--format", "synthetic", "--prompts", "300",
                   "--llms", "4", "--out", str(router_path)]) == 0
  import numpy as np
  np.save(tmp_path / "p.npy", np.zeros((3, 32), np.float32))
  capsys.readouterr()
  code = cli.main(["route", "--router", str(router_path), "--embeddings",
                   str(tmp_path / "p.npy"), "--out", str(tmp_path / "c.csv"), *extra])
  err = capsys.readouterr().err
  assert code == 2 and match in err and len(err.strip().splitlines()) == 1
  assert not (tmp_path / "c.csv").exists()


def test_build_router_with_a_learned_map(tmp_path, capsys):
  """--map learned saves the documented router: k-means Psi as the map's
  target, a softmax-dense map, soft Psi of every LLM."""
  import jax
  import numpy as np
  from uniroute_jax import Router, cluster_errors, fit_cluster_map, make_synthetic
  path = tmp_path / "r.npz"
  assert cli.main(["build-router", "--format", "synthetic", "--prompts", "400",
                   "--llms", "4", "--clusters", "5", "--map", "learned",
                   "--seed", "2", "--out", str(path)]) == 0
  assert "learned map with 5 clusters" in capsys.readouterr().out
  saved = Router.load(path)
  data = make_synthetic(jax.random.key(2), num_prompts=400, num_models=4)
  kmeans_key, map_key = jax.random.split(jax.random.key(2))
  hard = Router.from_kmeans(kmeans_key, data.embeddings, num_clusters=5)
  psi = cluster_errors(hard.membership(data.embeddings), data.loss, num_clusters=5,
                       mask=data.mask).psi
  fitted = fit_cluster_map(map_key, data.embeddings, data.loss, psi,
                           mask=data.mask, hidden=(), batch_norm=False)
  expected = Router.from_cluster_map(fitted).add_models(
      list(data.model_names), data.embeddings, data.loss, data.cost, mask=data.mask)
  assert saved.kind == "learned_map" and saved.models == expected.models
  np.testing.assert_array_equal(saved.predicted_loss(data.embeddings[:20]),
                                expected.predicted_loss(data.embeddings[:20]))
