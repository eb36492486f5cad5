"""The command line as a clumsy or hostile user drives it: every bad input is
one line naming the flag or the file and exit 2; no flag is silently
ignored; no output is overwritten, written twice or left partial; no NaN is
printed as a result; labels that are missing are reported."""

import csv
import json
import os
import re

import numpy as np
import pytest

from uniroute_jax import cli

LLMS = ("tiny-llm", "mid-llm", "coder-llm", "big-llm")
NUMPY_REPR = re.compile(r"\b(np|numpy)\.(float|int|uint|bool|str_|bytes_|complex)"
                        r"\w*\(|\barray\(\[")


def run(argv, capsys):
  """(exit code, stdout, the stderr lines that are not progress)."""
  code = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  assert "Traceback" not in err
  # A user reads numbers and names, not NumPy's reprs of them.
  assert not NUMPY_REPR.search(out + err), NUMPY_REPR.search(out + err)
  return code, out, [line for line in err.splitlines()
                     if not line.startswith(("[", "  "))]   # progress lines


def fails(argv, capsys, match):
  code, _, err = run(argv, capsys)
  assert code == 2 and len(err) == 1, err
  assert match in err[0], err[0]
  return err[0]


def write_traffic(folder, *, prompts=120, drop=None, nan_label=None,
                  columns=("prompt_id", "model", "correct", "cost")):
  """A long-format log of ``prompts`` x 4 LLMs with per-row USD costs and
  its embeddings; ``drop(i, model)`` leaves a row out, ``nan_label(i,
  model)`` writes the label text ``nan``."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(prompts, 8)).astype(np.float32)
  skill = {"tiny-llm": 0.3, "mid-llm": 0.5, "coder-llm": 0.7, "big-llm": 0.9}
  price = {"tiny-llm": 0.0, "mid-llm": 0.0, "coder-llm": 0.015, "big-llm": 0.06}
  rows = []
  for i in range(prompts):
    for model in LLMS:
      if drop is not None and drop(i, model):
        continue
      label = ("nan" if nan_label is not None and nan_label(i, model)
               else str(int(rng.random() < skill[model])))
      rows.append((f"p{i}", model, label, price[model]))
  data = os.path.join(folder, "traffic.csv")
  with open(data, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows(rows)
  embeddings = os.path.join(folder, "emb.npz")
  np.savez(embeddings, prompt_ids=np.array([f"p{i}" for i in range(prompts)]),
           embeddings=x)
  costs = os.path.join(folder, "costs.csv")
  with open(costs, "w") as f:
    f.write("model_name,cost\n" + "".join(f"{m},{price[m]}\n" for m in LLMS))
  return data, embeddings, costs


# ------------------------------------------------------- ignored flags


@pytest.mark.parametrize("argv, match", [
    (["build-router", "--format", "routerbench", "--data", "rb.csv", "--costs",
      "c.csv"], "--costs does not apply to --format routerbench: its CSVs hold "
                "a cost for every prompt"),
    (["build-router", "--format", "embedllm", "--data", "d", "--prompts", "9"],
     "--prompts does not apply to --format embedllm (only to --format synthetic)"),
    (["build-router", "--format", "synthetic", "--data", "d"],
     "--data does not apply to --format synthetic"),
    (["build-router", "--format", "synthetic", "--embeddings", "e.npy"],
     "--embeddings does not apply to --format synthetic"),
    (["build-router", "--format", "embedllm", "--data", "d", "--cost-column",
      "usd"], "--cost-column does not apply to --format embedllm (only to "
              "--format long)"),
    (["build-router", "--format", "long", "--data", "d", "--embeddings", "e",
      "--llms", "3"], "--llms does not apply to --format long"),
])
def test_a_flag_that_does_not_apply_is_an_error(tmp_path, capsys, argv, match):
  out = tmp_path / "r.npz"
  fails(argv + ["--out", out], capsys, match)
  assert not out.exists()


@pytest.mark.parametrize("extra, match", [
    (["--methods", "zero,knn", "--clusters", "5"],
     "--clusters applies to the routers kmeans,"),
    (["--methods", "zero,kmeans", "--neighbors", "5"],
     "--neighbors applies to the routers knn"),
    (["--methods", "zero,knn,oracle", "--psi-prior-strength", "2"],
     "--psi-prior-strength applies to the routers kmeans,"),
])
def test_a_router_flag_without_its_router_is_an_error(capsys, extra, match):
  message = fails(["evaluate", "--format", "synthetic", *extra], capsys, match)
  assert "none of which is in --methods" in message


@pytest.mark.parametrize("argv, match", [
    (["fit", "--format", "long", "--data", "a.csv", "--data", "b.csv"],
     "argument --data: given twice"),
    (["route", "r.npz", "p.txt", "-o", "a.jsonl", "--out", "b.jsonl"],
     "argument -o/--out: given twice"),
    (["evaluate", "--format", "synthetic", "--trials", "2", "--trials", "3"],
     "argument --trials: given twice"),
    (["evaluate", "--format", "synthetic", "--seed", "1", "--seed", "1"],
     "argument --seed: given twice"),
])
def test_a_flag_given_twice_is_an_error(tmp_path, capsys, argv, match):
  """argparse would keep the last value and drop the first without a word."""
  assert fails(argv, capsys, match).endswith("; give it once")


@pytest.mark.parametrize("argv, match", [
    (["fit", "--format", "synthetic", "--clusters", "3,3"],
     "--clusters: names 3 twice, got '3,3'"),
    (["fit", "--format", "synthetic", "--clusters", "3,03"],
     "--clusters: names a K twice"),
    (["fit", "--format", "synthetic", "--clusters", "3,"],
     "--clusters: expected comma-separated positive integers, got '3,'"),
    (["evaluate", "--format", "synthetic", "--methods", "zero,"],
     "--methods: expected a comma-separated list of"),
    (["evaluate", "--format", "synthetic", "--methods", "zero,knn,zero"],
     "--methods: names zero twice"),
    (["evaluate", "--format", "synthetic", "--onboarding-curve", "10,,all"],
     "--onboarding-curve: expected comma-separated positive numbers"),
    (["evaluate", "--format", "synthetic", "--onboarding-curve", "all,all"],
     "--onboarding-curve: names all twice"),
])
def test_list_flags_refuse_empty_and_repeated_items(tmp_path, capsys, argv,
                                                    match):
  """An empty item is a typo and a repeated one a slip: dropping either
  without a word would run something else than was asked."""
  fails(argv + ["--out", tmp_path / "r.npz"] if argv[0] == "fit" else argv,
        capsys, match)


# ------------------------------------------ messages in the user's language


def test_long_format_messages_name_flags_not_arguments(tmp_path, capsys):
  data, embeddings, _ = write_traffic(tmp_path)
  message = fails(["evaluate", "--format", "long", "--data", data,
                   "--embeddings", embeddings], capsys,
                  "exactly one of --cost-column (a column of per-row costs) "
                  "and --costs (per-model costs); neither was given")
  assert "=" not in message and "load_long" not in message
  (tmp_path / "renamed").mkdir()
  renamed, _, _ = write_traffic(tmp_path / "renamed",
                                columns=("q", "llm", "ok", "usd"))
  base = ["--format", "long", "--data", renamed, "--embeddings", embeddings,
          "--cost-column", "usd"]
  fails(["evaluate", *base], capsys, "or name it with --score-column")
  fails(["evaluate", *base, "--score-column", "ok"], capsys,
        "has no column 'prompt_id'")
  # With every column named, the log's own per-row costs are used.
  code, stdout, _ = run(["fit", "--map", "kmeans", *base, "--score-column", "ok",
                         "--prompt-column", "q", "--model-column", "llm",
                         "--clusters", "3", "--out", tmp_path / "r.npz"], capsys)
  assert code == 0 and "4 LLMs (tiny-llm, mid-llm, coder-llm, big-llm)" in stdout


def test_embedllm_without_embeddings_names_the_flag(tmp_path, capsys):
  (tmp_path / "model_order.csv").write_text("model_id,model_name\n0,a\n1,b\n")
  (tmp_path / "question_order.csv").write_text("prompt_id,prompt\n0,x\n")
  (tmp_path / "train.csv").write_text("model_id,prompt_id,label\n0,0,1\n1,0,0\n")
  (tmp_path / "costs.csv").write_text("model_name,cost\na,1\nb,2\n")
  message = fails(["evaluate", "--format", "embedllm", "--data", tmp_path],
                  capsys, "or give an embeddings file with --embeddings")
  assert "embeddings=" not in message


@pytest.mark.parametrize("argv, match", [
    (["demo", "--val-frac", "0.6", "--test-frac", "0.5"],
     "--val-frac + --test-frac must be below 1, got 0.6 + 0.5"),
    (["demo", "--prompts", "2"],
     "2 prompt(s) are too few to split into train, validation and test "
     "prompts, at least one of each: --val-frac 0.1 and --test-frac 0.3 take "
     "1 for validation and 1 for test, which leaves 0 to train on"),
    # Rounding up to one of each asks for more prompts than there are: the
    # message counts none to train on, never a negative number.
    (["demo", "--prompts", "1", "--trials", "2"], "which leaves 0 to train on"),
])
def test_protocol_messages_name_flags(capsys, argv, match):
  assert "_frac" not in fails(argv, capsys, match)


def test_tiny_data_says_which_flags_set_its_split(tmp_path, capsys):
  data, embeddings, costs = write_traffic(tmp_path, prompts=2)
  fails(["fit", "--format", "long", "--data", data, "--embeddings",
         embeddings, "--costs", costs, "--out", tmp_path / "r.npz"], capsys,
        f"--data {data} holds 2 prompt(s), too few to fit a router: it needs "
        "training, representative (--representatives 0.2) and held-out "
        "(--holdout 0.2) prompts, at least one of each")
  # One map and one K hold nothing out, so only the representatives count,
  # and generated data is named by the flags that sized it.
  fails(["fit", "--format", "synthetic", "--prompts", "1", "--map", "kmeans",
         "--clusters", "1", "--out", tmp_path / "r.npz"], capsys,
        "--format synthetic (--prompts 1, --llms 12) holds 1 prompt(s), too "
        "few to fit a router: it needs training and representative "
        "(--representatives 0.2) prompts, at least one of each")
  code, out, _ = run(["fit", "--format", "long", "--data", data,
                      "--embeddings", embeddings, "--costs", costs, "--map",
                      "kmeans", "--clusters", "1", "--out", tmp_path / "one.npz"],
                     capsys)
  assert code == 0 and "fitted on 1 prompts" in out, out
  (tmp_path / "more").mkdir()
  data, embeddings, costs = write_traffic(tmp_path / "more", prompts=40)
  fails(["fit", "--format", "long", "--data", data, "--embeddings",
         embeddings, "--costs", costs, "--clusters", "30", "--out",
         tmp_path / "r.npz"], capsys,
        "--clusters must be at most the 24 training prompts of a selection "
        "trial, got 30")
  fails(["fit", "--format", "long", "--data", data, "--embeddings",
         embeddings, "--costs", costs, "--representatives", "0.5",
         "--holdout", "0.5", "--out", tmp_path / "r.npz"], capsys,
        "--representatives + --holdout must be below 1, got 0.5 + 0.5")


# --------------------------------------------- labels: reported, never silent


def test_build_router_reports_missing_labels_and_uncovered_clusters(
    tmp_path, capsys):
  """Half of big-llm's rows lost and some labels written as 'nan': the
  build says how many labels each LLM lacks and that clusters go without."""
  data, embeddings, costs = write_traffic(
      tmp_path, drop=lambda i, m: m == "big-llm" and i % 2 == 0,
      nan_label=lambda i, m: m == "mid-llm" and i < 7)
  out = tmp_path / "r.npz"
  code, stdout, err = run(["fit", "--map", "kmeans", "--format", "long", "--data", data,
                           "--embeddings", embeddings, "--cost-column", "cost",
                           "--clusters", "12", "--out", out], capsys)
  assert code == 0 and out.exists()
  assert "Missing labels (masked, never guessed): mid-llm 7, big-llm 60" in stdout
  assert len(err) == 1 and err[0].startswith("uniroute: warning: ")
  assert "have labelled prompts in only some of the 12 clusters" in err[0]
  assert "--clusters" in err[0]


def test_an_llm_without_any_label_is_an_error(tmp_path, capsys):
  data, embeddings, costs = write_traffic(
      tmp_path, nan_label=lambda i, m: m == "coder-llm")
  for command in (["build-router", "--out", tmp_path / "r.npz"],
                  ["evaluate", "--methods", "zero"]):
    fails([*command, "--format", "long", "--data", data, "--embeddings",
           embeddings, "--costs", costs], capsys,
          f"--data {data}: LLM 'coder-llm' has no label at all")
  assert not (tmp_path / "r.npz").exists()


def test_an_llm_name_the_commands_could_not_address_is_refused(tmp_path,
                                                               capsys):
  data, embeddings, costs = write_traffic(tmp_path)
  with open(data) as f:
    text = f.read().replace("big-llm", '"big,llm"')
  with open(data, "w") as f:
    f.write(text)
  with open(costs, "w") as f:
    f.write("model_name,cost\n" + "".join(f"{m},1\n" for m in (
        "tiny-llm", "mid-llm", "coder-llm", '"big,llm"')))
  fails(["fit", "--out", tmp_path / "r.npz", "--format", "long", "--data",
         data, "--embeddings", embeddings, "--costs", costs], capsys,
        "its LLM 'big,llm' could not be named to route --models")
  assert not (tmp_path / "r.npz").exists()


def test_more_clusters_than_distinct_prompts_warns_in_one_line(tmp_path, capsys):
  data, _, costs = write_traffic(tmp_path, prompts=6)
  embeddings = tmp_path / "same.npy"
  np.save(embeddings, np.repeat(np.eye(2, 8, dtype=np.float32), 3, axis=0))
  code, _, err = run(["fit", "--map", "kmeans", "--format", "long", "--data", data,
                      "--embeddings", embeddings, "--costs", costs,
                      "--clusters", "3", "--out", tmp_path / "r.npz"], capsys)
  assert code == 0
  assert err[0] == ("uniroute: warning: --embeddings: only 2 distinct "
                    "point(s) of positive weight for --clusters 3, so 1 "
                    "cluster(s) repeat another's centroid; use fewer clusters")
  assert len(err) == 2 and "in only some of the 3 clusters" in err[1]


# ------------------------------------------------------ one reader, one set of checks


def test_route_refuses_repeated_prompt_ids(tmp_path, capsys):
  router = tmp_path / "r.npz"
  assert cli.main(["fit", "--map", "kmeans", "--format", "synthetic", "--prompts", "300",
                   "--llms", "4", "--clusters", "4", "--out", str(router)]) == 0
  capsys.readouterr()
  prompts = tmp_path / "p.npz"
  np.savez(prompts, prompt_ids=np.array(["a", "b", "a"]),
           embeddings=np.zeros((3, 32), np.float32))
  out = tmp_path / "c.csv"
  fails(["route", "--router", router, "--embeddings", prompts, "--out", out],
        capsys, "must be unique, but 'a' appears more than once")
  assert not out.exists()


# ---------------------------------------------------------------- outputs


SYNTHETIC = ["evaluate", "--format", "synthetic", "--prompts", "300", "--llms",
             "5", "--trials", "2", "--methods", "zero"]


@pytest.mark.parametrize("outputs, match", [
    (["--json", "{d}/x.png", "--plot", "{d}/x.png"],
     "--json and --plot name the same file"),
    (["--plot", "{d}/curves.txt"], "--plot must end in one of .png, .svg, .pdf"),
    (["--plot", "{d}/x.png", "--plot-excess", "{d}/x.png"],
     "--plot and --plot-excess name the same file"),
    (["--plot-excess", "{d}/x.txt"],
     "--plot-excess must end in one of .png, .svg, .pdf"),
    (["--plot-onboarding", "{d}/x.txt"],
     "--plot-onboarding must end in one of .png, .svg, .pdf"),
    (["--plot-bound", "{d}/x.png", "--plot-onboarding", "{d}/x.png"],
     "--plot-onboarding and --plot-bound name the same file"),
    (["--fixed-pool", "--onboarding-curve"], "--onboarding-curve measures how "
     "unseen LLMs are onboarded; it does not apply with --fixed-pool"),
    (["--json", "{d}/no/such/folder/r.json"], "--json: folder"),
    (["--json", "{d}/exists.json"], "--json: {d}/exists.json already exists"),
])
def test_outputs_are_checked_before_any_work(tmp_path, capsys, outputs, match):
  (tmp_path / "exists.json").write_text("precious")
  argv = SYNTHETIC + [o.format(d=tmp_path) for o in outputs]
  code, _, err = run(argv, capsys)
  assert code == 2 and err == [e for e in err if "uniroute: error:" in e]
  assert match.format(d=tmp_path) in err[0]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.json"]
  assert (tmp_path / "exists.json").read_text() == "precious"


@pytest.mark.skipif(not os.path.isdir("/proc/sys") or os.access("/proc/sys", os.W_OK),
                    reason="needs a folder this user cannot write (/proc/sys)")
def test_an_unwritable_folder_is_named_with_its_flag(capsys):
  fails(SYNTHETIC + ["--json", "/proc/sys/r.json"], capsys,
        "--json: folder /proc/sys is not writable")


def test_a_file_that_appears_while_running_is_not_overwritten(
    tmp_path, capsys, monkeypatch):
  """Another program writes the --plot (or --json) path during the run:
  that file is kept, and the command says so in one line."""
  from uniroute_jax import protocol
  evaluate = protocol.evaluate
  for flag, name in (("--plot", "r.png"), ("--json", "r.json"),
                     ("--plot-excess", "e.png")):
    path = tmp_path / name

    def evaluate_while_another_writes(*args, path=path, **kwargs):
      path.write_text("someone else's")
      return evaluate(*args, **kwargs)

    monkeypatch.setattr(protocol, "evaluate", evaluate_while_another_writes)
    fails(SYNTHETIC + [flag, path], capsys,
          f"{flag}: {path} appeared while running; it is never overwritten")
    assert path.read_text() == "someone else's"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["e.png", "r.json",
                                                        "r.png"]


# ------------------------------------------------------------ no NaN printed


def test_free_llms_give_defined_results(tmp_path, capsys):
  """Two LLMs cost 0: every test pool made of only them has largest cost 0.
  Curves and relative costs are defined there (relative cost 0) and no NaN
  reaches the table or the JSON."""
  data, embeddings, costs = write_traffic(tmp_path)
  out = tmp_path / "r.json"
  code, stdout, err = run(["evaluate", "--format", "long", "--data", data,
                           "--embeddings", embeddings, "--costs", costs,
                           "--trials", "8", "--methods", "zero,kmeans,oracle",
                           "--test-llm-frac", "0.5", "--json", out], capsys)
  assert code == 0, err
  assert "nan" not in stdout.lower()
  doc = json.loads(out.read_text())
  for entry in doc["methods"].values():
    assert None not in entry["trial_area"] and None not in entry["trial_area50"]
    assert None not in entry["mean_curve"]["quality"]


def test_a_table_never_shows_nan(capsys):
  import jax
  from uniroute_jax import make_synthetic, protocol, report
  data = make_synthetic(jax.random.key(0), num_prompts=200, num_models=5)
  evaluation = protocol.evaluate(jax.random.key(0), data, num_trials=2,
                                 methods=("zero", "oracle"))
  assert "nan" not in report.format_table(evaluation)
  broken = evaluation._replace(methods={
      **evaluation.methods,
      "zero": evaluation.methods["zero"]._replace(area=float("nan"))})
  with pytest.raises(ValueError, match="the Area of ZeroRouter is undefined"):
    report.format_table(broken)


# ------------------------------------------------- found by a hostile review


@pytest.fixture(scope="module")
def saved_router(tmp_path_factory):
  path = tmp_path_factory.mktemp("router") / "r.npz"
  assert cli.main(["fit", "--map", "kmeans", "--format", "synthetic", "--prompts", "300",
                   "--llms", "4", "--clusters", "4", "--out", str(path)]) == 0
  return path


def test_route_writes_text_ids_and_refuses_no_prompts(tmp_path, capsys,
                                                      saved_router):
  capsys.readouterr()
  prompts, out = tmp_path / "p.npz", tmp_path / "c.csv"
  np.savez(prompts, prompt_ids=np.array([b"p0", b"p1"]),
           embeddings=np.zeros((2, 32), np.float32))
  code, _, _ = run(["route", "--router", saved_router, "--embeddings", prompts,
                    "--out", out], capsys)
  assert code == 0
  assert [line.split(",")[0] for line in out.read_text().splitlines()] == [
      "prompt_id", "p0", "p1"]
  np.save(tmp_path / "none.npy", np.zeros((0, 32), np.float32))
  fails(["route", "--router", saved_router, "--embeddings", tmp_path / "none.npy",
         "--out", tmp_path / "d.csv"], capsys, "holds no prompts")
  assert not (tmp_path / "d.csv").exists()


@pytest.mark.parametrize("extra, match", [
    (["--models", "llm-00,llm-00"], "--models must be unique, ['llm-00'] repeat"),
    (["--models", "LLM-00"], "--models: ['LLM-00'] not in the pool"),
    (["--lambda", "1e39"], "--lambda 1e+39 does not fit the router's float32"),
    (["--lambda", "1e-50"], "--lambda 1e-50 does not fit the router's float32"),
])
def test_route_flags_are_named(tmp_path, capsys, saved_router, extra, match):
  np.save(tmp_path / "p.npy", np.zeros((3, 32), np.float32))
  out = tmp_path / "c.csv"
  fails(["route", "--router", saved_router, "--embeddings", tmp_path / "p.npy",
         "--out", out, *extra], capsys, match)
  assert not out.exists()


@pytest.mark.parametrize("make, match", [
    (lambda d: np.savez(d / "e.npz", prompt_ids=np.arange(3), ids=np.arange(3),
                        embeddings=np.zeros((3, 32))), "holds both 'prompt_ids' and 'ids'"),
    (lambda d: np.savez(d / "e.npz", prompt_ids=np.arange(3), junk=np.arange(3),
                        embeddings=np.zeros((3, 32))), "holds arrays ['junk'] that"),
    (lambda d: (d / "e.npz").write_bytes(b"PK\x03\x04garbage"), "not an embeddings file"),
    (lambda d: (d / "e.npz").write_text("prompt_id,x\n1,2\n"),
     "not an embeddings file: it is not a NumPy .npz file"),
])
def test_bad_embeddings_archives_are_one_line(tmp_path, capsys, saved_router,
                                              make, match):
  make(tmp_path)
  fails(["route", "--router", saved_router, "--embeddings", tmp_path / "e.npz",
         "--out", tmp_path / "c.csv"], capsys, match)


@pytest.mark.parametrize("outputs, match", [
    (["--json", ""], "--json: expected the name of a new file, got ''"),
    (["--json", "{d}/res/"], "--json: expected the name of a new file"),
    (["--json", "{d}/exists.json/"], "--json: expected the name of a new file"),
    (["--plot", "{d}"], "--plot: expected the name of a new file"),
    (["--plot-onboarding", "{d}"], "--plot-onboarding: expected the name of a "
     "new file"),
    (["--onboarding-curve", "25,0"], "--onboarding-curve: expected "
     "comma-separated positive numbers of prompts or 'all', got '25,0'"),
    (["--onboarding-curve", "many"], "--onboarding-curve: expected"),
    (["--psi-prior-strength", "auto"], "--psi-prior-strength: expected a "
     "non-negative number or 'empirical-bayes', got 'auto'"),
])
def test_output_paths_that_name_no_file(tmp_path, capsys, outputs, match):
  (tmp_path / "exists.json").write_text("precious")
  fails(SYNTHETIC + [o.format(d=tmp_path) for o in outputs], capsys, match)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.json"]


def test_empty_out_paths(tmp_path, capsys, saved_router):
  fails(["build-router", "--format", "synthetic", "--out", ""], capsys,
        "--out: expected the name of a new file, got ''")
  np.save(tmp_path / "p.npy", np.zeros((3, 32), np.float32))
  fails(["route", "--router", saved_router, "--embeddings", tmp_path / "p.npy",
         "--out", ""], capsys, "--out: expected the name of a new file")


@pytest.mark.parametrize("argv, match", [
    (SYNTHETIC + ["--seed", "99999999999999999999999"],
     "--seed: expected an integer in [0, 2**32)"),
    (SYNTHETIC + ["--seed", "-1"], "--seed: expected an integer in [0, 2**32)"),
    (SYNTHETIC + ["--test-llm-frac", "0.99"],
     "--test-llm-frac 0.99 holds out 5 of the 5 LLMs, leaving none to train on"),
])
def test_protocol_flags_out_of_range(capsys, argv, match):
  fails(argv, capsys, match)


def test_a_raised_test_pool_is_said(capsys):
  """An unseen pool needs 2 LLMs: a share asking for fewer is raised, and the
  user is told, once."""
  code, out, err = run(SYNTHETIC + ["--test-llm-frac", "0.2"], capsys)
  assert code == 0 and err == [
      "uniroute: warning: --test-llm-frac 0.2 of the 5 LLMs is 1; 2 are held "
      "out, the fewest an unseen pool to route between takes"], err
  assert "3 training and 2 unseen test LLMs" in out
  code, out, err = run(SYNTHETIC, capsys)
  assert code == 0 and err == [] and "3 training and 2 unseen test LLMs" in out


def test_onboarding_sizes_beyond_the_validation_prompts_are_said(capsys):
  kmeans = SYNTHETIC[:SYNTHETIC.index("--methods")] + ["--methods", "kmeans"]
  code, out, err = run(kmeans + ["--onboarding-curve", "10,50,200"], capsys)
  assert code == 0 and err == [
      "uniroute: warning: --onboarding-curve 50, 200: a trial has only 30 "
      "validation prompts to run an unseen LLM on, so those sizes are all of "
      "them"], err


def test_more_clusters_than_validation_prompts_are_said(capsys):
  kmeans = SYNTHETIC[:SYNTHETIC.index("--methods")] + ["--methods", "kmeans"]
  code, _, err = run(kmeans + ["--clusters", "31"], capsys)
  assert code == 0 and err == [
      "uniroute: warning: --clusters 31 is more than the 30 validation prompts "
      "of a trial, on which unseen LLMs are measured: a cluster without one "
      "gives them their overall error there"], err
  code, _, err = run(kmeans + ["--clusters", "30"], capsys)
  assert code == 0 and err == []


def test_equal_costs_are_said_to_leave_nothing_to_trade(tmp_path, capsys):
  data, embeddings, _ = write_traffic(tmp_path)
  free = tmp_path / "free.csv"
  free.write_text("model_name,cost\n" + "".join(f"{m},0\n" for m in LLMS))
  code, out, err = run(["evaluate", "--format", "long", "--data", data,
                        "--embeddings", embeddings, "--costs", free,
                        "--trials", "1", "--methods", "zero"], capsys)
  assert code == 0 and err == [
      "uniroute: warning: every LLM costs the same on every prompt, so no "
      "router trades quality for cost: each Area is the router's quality at "
      "lambda 0, and QNC is 0% for every router"], err


def test_tampered_router_files_are_refused(tmp_path, saved_router):
  import json as json_module
  from uniroute_jax import Router
  arrays = dict(np.load(saved_router))
  meta = json_module.loads(str(arrays["metadata"]))

  def tampered(meta_changes=(), **array_changes):
    changed = {**arrays, **array_changes}
    changed["metadata"] = np.array(json_module.dumps({**meta, **dict(meta_changes)}))
    path = tmp_path / f"t{len(list(tmp_path.iterdir()))}.npz"
    np.savez(path, **changed)
    return path

  cases = [
      (tampered(centroids=arrays["centroids"].astype(np.int32)), "must be floating"),
      (tampered({"num_clusters": "4"}), "'num_clusters' must be a positive integer"),
      (tampered({"num_clusters": 3.7}), "'num_clusters' must be a positive integer"),
      (tampered({"version": True}), "format version True"),
      (tampered({"map": "x"}), "'map' must be a mapping"),
      (tampered({"dtype": "nonsense"}), "'dtype' is missing or not a dtype"),
      (tampered({"dtype": "int32"}), "'dtype' must be a float dtype"),
      (tampered({"kind": "learned_map"}), "its metadata lacks 'hidden'"),
  ]
  for path, match in cases:
    with pytest.raises(ValueError, match=match):
      Router.load(path)
  with pytest.raises(FileNotFoundError, match="router file not found"):
    Router.load(tmp_path / "missing.npz")


def test_saving_into_a_missing_folder_names_the_path(tmp_path, saved_router):
  from uniroute_jax import Router
  target = tmp_path / "no" / "r.npz"
  with pytest.raises(FileNotFoundError, match=f"cannot write {target}: folder"):
    Router.load(saved_router).save(target)
  assert not (tmp_path / "no").exists()


def test_ctrl_c_while_starting_is_one_line(tmp_path):
  """Ctrl-C while the command still imports JAX: the package imports it
  only on first use, so the interrupt reaches the command's handler."""
  import signal
  import subprocess
  import sys
  import time
  process = subprocess.Popen(
      [sys.executable, "-m", "uniroute_jax", *SYNTHETIC, "--json",
       str(tmp_path / "r.json")], stderr=subprocess.PIPE, text=True,
      cwd=tmp_path)
  time.sleep(0.6)
  process.send_signal(signal.SIGINT)
  _, err = process.communicate(timeout=60)
  assert process.returncode == 130, err
  assert err.strip().splitlines()[-1] == (
      "uniroute: interrupted; no partial file is left")
  assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_importing_the_package_does_not_import_jax():
  import subprocess
  import sys
  code = ("import sys, uniroute_jax, uniroute_jax.cli; "
          "assert 'jax' not in sys.modules; uniroute_jax.route; "
          "assert 'jax' in sys.modules; print('ok')")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120)
  assert result.stdout.strip() == "ok", result.stderr


def test_ctrl_c_swallowed_by_a_finaliser_still_stops_the_command(
    tmp_path, capsys, monkeypatch):
  """Python swallows a KeyboardInterrupt raised in a garbage-collector
  callback or a finaliser (JAX runs one on every collection). The command
  remembers the Ctrl-C, stops at its next trial, writes nothing, prints one
  line (no "Exception ignored" traceback) and exits 130."""
  import signal
  from uniroute_jax import protocol

  class Finaliser:
    def __del__(self):
      signal.raise_signal(signal.SIGINT)   # Ctrl-C, arriving in here

  def evaluate_interrupted_in_a_finaliser(*args, on_progress, **kwargs):
    Finaliser()               # dropped at once: the interrupt is swallowed
    on_progress(1, 2)         # the next trial: the command stops here
    raise AssertionError("the interrupt was lost")

  monkeypatch.setattr(protocol, "evaluate", evaluate_interrupted_in_a_finaliser)
  out = tmp_path / "r.json"
  assert cli.main(SYNTHETIC + ["--json", str(out)]) == 130
  err = capsys.readouterr().err
  assert err.strip().splitlines()[-1] == "uniroute: interrupted; no partial file is left"
  assert "Traceback" not in err and "Exception ignored" not in err
  assert not out.exists()


def test_add_model_labels_name_the_files_rows(tmp_path, capsys, saved_router):
  """A traffic log as labels: a message counts the file's data rows from 1,
  the other LLMs' rows included, and repeated labels are said to be
  averaged."""
  from uniroute_jax import Router
  ids = Router.load(saved_router).representatives.ids
  log = tmp_path / "log.csv"

  def write(new_llm_scores):
    with log.open("w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["prompt_id", "model", "correct"])
      for i, score in zip(ids, new_llm_scores):
        writer.writerow([i, "other-llm", "oops"])   # not the new LLM's
        writer.writerow([i, "new-llm", score])

  add = ["add-model", saved_router, "--name", "new-llm", "--cost", "1",
         "--labels", log, "-o", tmp_path / "n.npz"]
  write(["1", "0", "2"])
  # The third new-llm row is the file's sixth data row.
  fails(add, capsys, "column 'correct' must lie in [0, 1], got 2.0 in data "
        "row 6")
  write(["1"] * len(ids))
  with log.open("a", newline="") as f:
    csv.writer(f).writerows([[ids[0], "new-llm", "0"], [ids[1], "new-llm", "0"]])
  code, out, _ = run(add, capsys)
  assert code == 0
  assert (f"Repeated rows: {len(ids) + 2} scores averaged into {len(ids)} "
          "labels") in out


def test_text_for_a_router_of_other_embeddings_is_refused_before_embedding(
    tmp_path, capsys, saved_router):
  """A router of 32-d embeddings that records no encoder cannot route the
  built-in encoder's 384-d ones: said before any prompt is embedded."""
  prompts = tmp_path / "p.txt"
  prompts.write_text("What is 2 + 2?\nName a prime.\n")
  code = cli.main(["route", str(saved_router), str(prompts), "-o",
                   str(tmp_path / "d.jsonl")])
  err = capsys.readouterr().err
  assert code == 2 and err.strip().splitlines() == [
      f"uniroute: error: the router routes 32-d embeddings and records no "
      f"encoder; the built-in encoder's are 384-d, so the text of {prompts} "
      "cannot be routed with it: embed the prompts as the router's were and "
      "pass the embeddings file"], err
  assert not (tmp_path / "d.jsonl").exists()


def test_small_cli_edges(tmp_path, capsys, saved_router, monkeypatch):
  """A folder given as a router, empty list items, references alone with
  --plot-excess, .ndjson prompts, INPUT named as given, and a reader that
  stops reading (`| head`)."""
  fails(["models", tmp_path], capsys, "is a folder, not a router file")
  out = tmp_path / "d.jsonl"
  fails(["route", saved_router, tmp_path / "p.npy", "--lambda", "1,,2",
         "-o", out], capsys, "expected comma-separated non-negative numbers")
  fails(["remove-model", saved_router, "--name", "a,,b", "-o",
         tmp_path / "r.npz"], capsys, "expected comma-separated names")
  fails(["evaluate", "--format", "synthetic", "--methods", "oracle",
         "--plot-excess", tmp_path / "p.png"], capsys,
        "names no router but references")
  fails(["route", saved_router, saved_router, "-o", out], capsys,
        "expected a single [n, d] array")
  (tmp_path / "p.ndjson").write_text('{"prompt": "a"}\n')
  code, _, err = run(["route", saved_router, tmp_path / "p.ndjson", "-o", out],
                     capsys)
  assert "INPUT must end in" not in " ".join(err)

  class ClosedPipe:
    def write(self, text):
      raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
      pass

  monkeypatch.setattr("sys.stdout", ClosedPipe())
  assert cli.main(["models", str(saved_router)]) == 0
  assert capsys.readouterr().err == ""


def test_an_undefined_result_from_sparse_labels_names_the_llm(tmp_path, capsys):
  data, embeddings, costs = write_traffic(
      tmp_path, drop=lambda i, m: m == "coder-llm" and i >= 1)
  fails(["evaluate", "--format", "long", "--data", data, "--embeddings",
         embeddings, "--costs", costs, "--methods", "knn", "--trials", "6"],
        capsys, "LLM 'coder-llm' is labelled on only 1 of 120 prompts, and a "
                "trial scores its LLMs on the prompts labelled for all of them")


def test_one_k_is_bounded_by_the_prompts_the_map_is_fitted_on(tmp_path, capsys):
  """With one K and one map nothing is chosen on selection trials: K may
  exceed a trial's training prompts, up to every non-representative one."""
  base = ["fit", "--format", "synthetic", "--prompts", "300", "--llms", "4",
          "--map", "kmeans"]
  code, out, _ = run([*base, "--clusters", "200", "--out", tmp_path / "a.npz"],
                     capsys)
  assert code == 0 and "K = 200, fitted on 240 prompts" in out
  fails([*base, "--clusters", "241", "--out", tmp_path / "b.npz"], capsys,
        "--clusters must be at most the 240 prompts the map is fitted on")


def test_prompts_labelled_by_no_llm_are_named_in_a_warning(tmp_path, capsys):
  data, embeddings, costs = write_traffic(tmp_path, nan_label=lambda i, m: i < 30)
  code, _, err = run(["fit", "--out", tmp_path / "r.npz", "--format", "long",
                      "--data", data, "--embeddings", embeddings, "--costs",
                      costs, "--map", "kmeans", "--clusters", "4"], capsys)
  assert code == 0
  assert any("30 of 120 prompts have no label from any LLM" in line
             for line in err), err


# ------------------------------------------- values the work cannot hold


@pytest.mark.parametrize("command", ["evaluate", "fit"])
def test_a_prior_strength_beyond_float32_is_refused(tmp_path, capsys, command):
  """1e40 pseudo-prompts is infinite in float32: every shrunk cluster error
  would be inf / inf, and the table showed a router above the oracle."""
  data, embeddings, _ = write_traffic(tmp_path)
  argv = [command, "--format", "long", "--data", data, "--embeddings",
          embeddings, "--cost-column", "cost", "--psi-prior-strength", "1e40"]
  if command == "fit":
    argv += ["--out", tmp_path / "r.npz"]
  fails(argv, capsys, "--psi-prior-strength 1e+40 does not fit the data's "
                      "float32")
  assert not (tmp_path / "r.npz").exists()


@pytest.mark.parametrize("argv, match", [
    (["demo", "--prompts", "100000000000", "--trials", "1"],
     "--prompts / --llms 100000000000 / 12: 100000000000 prompts x 12 LLMs "
     "would need about"),
    (["evaluate", "--format", "synthetic", "--trials", "100000000000"],
     "--trials 100000000000: 100000000000 trials of 5000 prompts would need"),
])
def test_sizes_beyond_the_machine_are_refused_before_any_work(capsys, argv,
                                                               match):
  assert "more than half of this machine's" in fails(argv, capsys, match)


def test_the_embedding_cache_may_not_be_an_output(tmp_path, capsys,
                                                  monkeypatch):
  monkeypatch.chdir(tmp_path)
  data, _, _ = write_traffic(tmp_path)
  fails(["evaluate", "--format", "long", "--data", data, "--cost-column",
         "cost", "--prompt-column", "prompt_id", "--cache", "same.json",
         "--json", "same.json"], capsys,
        "--cache and --json name the same file same.json")
  assert not (tmp_path / "same.json").exists()


def test_outputs_through_a_linked_folder_are_one_file(tmp_path, capsys):
  (tmp_path / "d1").mkdir()
  os.symlink(tmp_path / "d1", tmp_path / "d2")
  fails(["evaluate", "--format", "synthetic", "--trials", "2", "--json",
         tmp_path / "d1" / "x.json", "--plot", tmp_path / "d2" / "x.json"],
        capsys, "name the same file")
  assert not os.listdir(tmp_path / "d1")


def test_a_folder_given_as_a_long_table_is_named(tmp_path, capsys):
  _, embeddings, _ = write_traffic(tmp_path)
  (tmp_path / "logs").mkdir()
  fails(["evaluate", "--format", "long", "--data", tmp_path / "logs",
         "--embeddings", embeddings, "--cost-column", "cost"], capsys,
        "is a folder; a long-format table is one CSV or Parquet file")


def test_fixed_pool_names_the_onboarding_flag_given(tmp_path, capsys):
  fails(["evaluate", "--format", "synthetic", "--fixed-pool",
         "--plot-onboarding", tmp_path / "o.png"], capsys,
        "--plot-onboarding measures how unseen LLMs are onboarded")


def test_sparse_labels_say_how_many_test_prompts_are_scored(tmp_path, capsys):
  """A trial scores only the test prompts labelled for every test LLM;
  with half the labels missing that is a few, and the command says so."""
  data, embeddings, _ = write_traffic(
      tmp_path, drop=lambda i, model: model != "tiny-llm" and (i * 7 + len(model)) % 2)
  report = tmp_path / "r.json"
  code, out, err = run(["evaluate", "--format", "long", "--data", data,
                        "--embeddings", embeddings, "--cost-column", "cost",
                        "--fixed-pool", "--trials", "2", "--methods", "zero",
                        "--json", report], capsys)
  assert code == 0, err
  scored = json.loads(report.read_text())["split_sizes"]["scored_test_prompts"]
  assert len(scored) == 2 and max(scored) < 36
  low, high = min(scored), max(scored)
  counts = str(low) if low == high else f"{low}-{high}"
  assert f"Scored per trial: {counts} of the 36 test prompts" in out
  assert any(line.startswith(f"uniroute: warning: a trial scores only {low} ")
             for line in err), err
