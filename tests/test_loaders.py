"""Loaders: every value lands in its (prompt, model) cell; bad input fails clearly."""

import csv
import importlib.util
import os
import zipfile

import numpy as np
import pytest

from conftest import shared_data_dir
from uniroute_jax.data import (load_embeddings, load_embedllm, load_long,
                               load_routerbench, missing_labels,
                               read_embeddings)


def write_csv(path, header, rows):
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def savez(path, **arrays):
  """np.savez, which cannot take an array named 'file' (its own argument)."""
  with zipfile.ZipFile(path, "w") as z:
    for key, value in arrays.items():
      with z.open(key + ".npy", "w") as f:
        np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


def embedding_of(key, d=4):
  """A distinct, exactly representable vector per prompt key."""
  seed = sum(ord(c) * (i + 1) for i, c in enumerate(str(key)))
  return np.random.default_rng(seed).integers(-8, 8, d).astype(np.float32) / 8


def assert_cells(data, expected_score, expected_cost=None):
  """expected_score: {(prompt id, model): score or None for missing}."""
  ids = [str(i) for i in data.prompt_ids]
  for (prompt, model), score in expected_score.items():
    i, j = ids.index(str(prompt)), data.model_names.index(model)
    if score is None:
      assert not data.mask[i, j], (prompt, model)
      assert data.loss[i, j] == 0.0
    else:
      assert data.mask[i, j], (prompt, model)
      assert data.loss[i, j] == pytest.approx(1.0 - score), (prompt, model)
  assert data.mask.sum() == sum(s is not None for s in expected_score.values())
  for (prompt, model), cost in (expected_cost or {}).items():
    i, j = ids.index(str(prompt)), data.model_names.index(model)
    got = data.cost[i, j] if data.cost.ndim == 2 else data.cost[j]
    assert got == pytest.approx(cost, rel=1e-6), (prompt, model)


# ---------------------------------------------------------------- RouterBench

MODELS = ["org/model-a", "model_b", "model c"]
# {file: [(sample_id, scores, costs)]}; "" is a missing score. The "dup" rows
# complement each other, like the 14 duplicated ARC ids of the real data.
ROUTERBENCH = {
    "b_test.csv": [
        ("s3", ["0.0", "1.0", "1.0"], [0.7, 0.8, 0.9]),
        ("dup", ["", "0.0", ""], [0.01, 0.02, 0.03]),
    ],
    "a_train.csv": [
        ("s1", ["1.0", "0.0", ""], [0.1, 0.2, 0.3]),
        ("dup", ["1.0", "", "0.5"], [0.4, 0.5, 0.6]),
        ("s2", ["1", "1", "0"], [1e-5, 2e-5, 3e-5]),
    ],
}


def write_routerbench(folder, table=ROUTERBENCH, embeddings=True,
                      huge_prompt=False):
  os.makedirs(folder, exist_ok=True)
  keys = []
  for k, (name, rows) in enumerate(sorted(table.items())):
    # The second file lists the models in another order.
    models = MODELS if k == 0 else MODELS[::-1]
    header = (["", "sample_id", "prompt", "eval_name"] + models
              + [m + "|model_response" for m in models]
              + [m + "|total_cost" for m in models]
              + ["oracle_model_to_route_to"])
    out = []
    for r, (sample, scores, costs) in enumerate(rows):
      by_model = dict(zip(MODELS, zip(scores, costs)))
      prompt = "['Q, with \"quotes\"\nand a newline']"
      if huge_prompt and r == 0:
        prompt = "['" + "x" * 300_000 + "']"  # above csv's 128 KiB default
      out.append([100 + r, sample, prompt, name.split("_")[0]]
                 + [by_model[m][0] for m in models]
                 + [f"answer of {m}, row {r}" for m in models]
                 + [repr(by_model[m][1]) for m in models] + [models[0]])
      keys.append((name, r))
    write_csv(os.path.join(folder, name), header, out)
  if embeddings:
    # Shuffled, with a row of a file that is not loaded: aligned by (file, row).
    keys.append(("other.csv", 0))
    order = np.random.default_rng(0).permutation(len(keys))
    keys = [keys[i] for i in order]
    savez(os.path.join(folder, "embeddings.npz"),
             file=np.array([f for f, _ in keys]),
             row=np.array([r for _, r in keys], np.int32),
             sample_id=np.array(["x"] * len(keys)),
             embedding=np.stack([embedding_of(f"{f}:{r}") for f, r in keys]
                                ).astype(np.float16))
  return str(folder)


def routerbench_expected(table=ROUTERBENCH):
  scores, costs = {}, {}
  for name, rows in table.items():
    for r, (_, row_scores, row_costs) in enumerate(rows):
      for m, s, c in zip(MODELS, row_scores, row_costs):
        scores[(f"{name}:{r}", m)] = float(s) if s else None
        costs[(f"{name}:{r}", m)] = c
  return scores, costs


def test_routerbench_round_trip(tmp_path):
  folder = write_routerbench(tmp_path / "rb", huge_prompt=True)
  data = load_routerbench(folder)
  assert data.model_names == tuple(MODELS)
  assert list(data.prompt_ids) == ["a_train.csv:0", "a_train.csv:1",
                                   "a_train.csv:2", "b_test.csv:0",
                                   "b_test.csv:1"]
  assert data.embeddings.dtype == np.float32 and data.loss.dtype == np.float32
  assert data.cost.shape == (5, 3)
  assert_cells(data, *routerbench_expected())
  for i, prompt in enumerate(data.prompt_ids):
    np.testing.assert_array_equal(data.embeddings[i], embedding_of(prompt))
  assert missing_labels(data) == {"org/model-a": 1, "model_b": 1, "model c": 2}


def test_routerbench_files_and_embeddings_argument(tmp_path):
  folder = write_routerbench(tmp_path / "rb")
  one = os.path.join(folder, "b_test.csv")
  # A single file finds embeddings.npz next to it.
  data = load_routerbench(one)
  assert list(data.prompt_ids) == ["b_test.csv:0", "b_test.csv:1"]
  np.testing.assert_array_equal(data.embeddings[1], embedding_of("b_test.csv:1"))
  # A list keeps its order; embeddings may be an .npy in row order.
  files = [one, os.path.join(folder, "a_train.csv")]
  npy = tmp_path / "emb.npy"
  np.save(npy, np.arange(20, dtype=np.float64).reshape(5, 4))
  data = load_routerbench(files, embeddings=npy)
  assert data.prompt_ids[0] == "b_test.csv:0" and data.prompt_ids[2] == "a_train.csv:0"
  np.testing.assert_array_equal(data.embeddings[2], [8, 9, 10, 11])
  assert_cells(data, *routerbench_expected())


def test_routerbench_merge_duplicate_ids(tmp_path):
  data = load_routerbench(write_routerbench(tmp_path / "rb"),
                          merge_duplicate_ids=True)
  assert list(data.prompt_ids) == ["a_train.csv:0", "a_train.csv:1",
                                   "a_train.csv:2", "b_test.csv:0"]
  i = 1  # the merged "dup" row keeps the first row's id and embedding
  np.testing.assert_array_equal(data.mask[i], [True, True, True])
  np.testing.assert_allclose(data.loss[i], [0.0, 1.0, 0.5])
  # Each cost comes from the row holding that model's label.
  np.testing.assert_allclose(data.cost[i], [0.4, 0.02, 0.6], rtol=1e-6)
  np.testing.assert_array_equal(data.embeddings[i], embedding_of("a_train.csv:1"))
  np.testing.assert_array_equal(data.loss[3], [1.0, 0.0, 0.0])


def test_routerbench_merge_conflict_names_the_id(tmp_path):
  table = dict(ROUTERBENCH)
  table["b_test.csv"] = [ROUTERBENCH["b_test.csv"][0],
                         ("dup", ["0.0", "0.0", ""], [0.01, 0.02, 0.03])]
  folder = write_routerbench(tmp_path / "rb", table)
  assert load_routerbench(folder).num_prompts == 5  # no merge, no conflict
  with pytest.raises(ValueError, match="sample_id 'dup'.*conflicting.*org/model-a"):
    load_routerbench(folder, merge_duplicate_ids=True)


def edit_file(path, edit):
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  rows = edit(rows)
  write_csv(path, rows[0], rows[1:])


def drop_column(name):
  def edit(rows):
    k = rows[0].index(name)
    return [r[:k] + r[k + 1:] for r in rows]
  return edit


def set_cell(row, column, value):
  def edit(rows):
    rows[row + 1][rows[0].index(column)] = value
    return rows
  return edit


@pytest.mark.parametrize("edit, message", [
    (drop_column("model_b|total_cost"),
     "model column 'model_b' has no 'model_b|total_cost'"),
    (drop_column("model c"),
     "cost column 'model c|total_cost' has no model column"),
    (drop_column("sample_id"), "no column 'sample_id'"),
    (set_cell(1, "model_b|total_cost", ""),
     "'model_b|total_cost' is empty or NaN in data row 2"),
    (set_cell(0, "model_b|total_cost", "-1"), "must be non-negative"),
    (set_cell(0, "model_b", "2.0"), r"'model_b' must lie in \[0, 1\]"),
    (set_cell(0, "model_b", "yes"),
     "'model_b' must hold numbers, got 'yes' in data row 1"),
])
def test_routerbench_bad_columns(tmp_path, edit, message):
  folder = write_routerbench(tmp_path / "rb")
  edit_file(os.path.join(folder, "b_test.csv"), edit)
  with pytest.raises(ValueError, match=message):
    load_routerbench(folder)


def test_routerbench_models_must_agree_across_files(tmp_path):
  folder = write_routerbench(tmp_path / "rb")
  add_model = lambda rows: ([rows[0] + ["new", "new|total_cost"]]
                           + [r + ["0.5", "0.1"] for r in rows[1:]])
  edit_file(os.path.join(folder, "b_test.csv"), add_model)
  with pytest.raises(ValueError, match="every file must have the same models"):
    load_routerbench(folder)


def test_routerbench_pickle_needs_allow_pickle(tmp_path):
  pkl = tmp_path / "routerbench_0shot.pkl"
  pkl.write_bytes(b"not really a pickle")
  with pytest.raises(ValueError, match="pickle.*convert it to CSV.*allow_pickle=True"):
    load_routerbench(pkl)
  if importlib.util.find_spec("pandas") is None:
    with pytest.raises(ImportError, match="needs pandas"):
      load_routerbench(pkl, allow_pickle=True)
  # A directory reads only the CSVs, and says how to read a lone pickle.
  with pytest.raises(ValueError, match="no \\*.csv files.*allow_pickle=True"):
    load_routerbench(tmp_path)


def test_routerbench_missing_paths_and_embeddings(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found.*nowhere"):
    load_routerbench(tmp_path / "nowhere.csv")
  with pytest.raises(FileNotFoundError, match="not found.*nowhere"):
    load_routerbench(tmp_path / "nowhere")
  folder = write_routerbench(tmp_path / "rb", embeddings=False)
  with pytest.raises(ValueError, match="no embeddings found.*give embeddings a .npz"):
    load_routerbench(folder)
  npz = tmp_path / "short.npz"
  savez(npz, file=np.array(["a_train.csv"]), row=np.array([0]),
        embedding=np.ones((1, 4)))
  with pytest.raises(ValueError,
                     match="4 of 5 prompt ids are missing.*e.g. 'a_train.csv:1'"):
    load_routerbench(folder, embeddings=npz)


# ------------------------------------------------------------------- EmbedLLM

EMBEDLLM_MODELS = ["tiny-1b", "mid 7B", "big/70b"]
# (split file, model_id, prompt_id, label); prompt 3 has no label from
# model 2, and prompt 4 has none at all (it must stay, fully masked).
EMBEDLLM_LABELS = [
    ("train.csv", 0, 0, 1), ("train.csv", 1, 0, 0), ("train.csv", 2, 0, 1),
    ("train.csv", 0, 2, 0), ("train.csv", 1, 2, 1), ("train.csv", 2, 2, 1),
    ("test.csv", 0, 1, 1), ("test.csv", 1, 1, 1), ("test.csv", 2, 1, 0),
    ("test.csv", 0, 3, 0), ("test.csv", 1, 3, 1),
]
PARAMS = {"tiny-1b": 1.1, "mid 7B": 7.0, "big/70b": 70.5, "unused": 3.0}


def write_embedllm(folder, costs=True):
  os.makedirs(folder, exist_ok=True)
  write_csv(os.path.join(folder, "model_order.csv"), ["model_id", "model_name"],
            list(enumerate(EMBEDLLM_MODELS)))
  write_csv(os.path.join(folder, "question_order.csv"),
            ["prompt_id", "prompt", "category"],
            [(i, f"question {i}, with a comma", "math") for i in range(5)])
  for split in ("train.csv", "test.csv"):
    write_csv(os.path.join(folder, split),
              ["model_id", "prompt_id", "label", "model_name", "category"],
              [(j, p, y, EMBEDLLM_MODELS[j], "math")
               for s, j, p, y in EMBEDLLM_LABELS if s == split])
  if costs:
    write_csv(os.path.join(folder, "costs.csv"),
              ["model_name", "note", "num_params_b"],
              [(m, "dense", v) for m, v in PARAMS.items()])
  np.save(os.path.join(folder, "embeddings.npy"),
          np.stack([embedding_of(i) for i in range(5)]).astype(np.float16))
  return str(folder)


def embedllm_expected():
  scores = {(p, m): None for p in range(5) for m in EMBEDLLM_MODELS}
  for _, j, p, y in EMBEDLLM_LABELS:
    scores[(p, EMBEDLLM_MODELS[j])] = float(y)
  return scores


def test_embedllm_round_trip(tmp_path):
  data = load_embedllm(write_embedllm(tmp_path / "e"))
  assert data.model_names == tuple(EMBEDLLM_MODELS)
  np.testing.assert_array_equal(data.prompt_ids, np.arange(5))
  assert_cells(data, embedllm_expected())
  np.testing.assert_allclose(data.cost, [1.1, 7.0, 70.5], rtol=1e-6)
  for i in range(5):
    np.testing.assert_array_equal(data.embeddings[i], embedding_of(i))
  assert missing_labels(data) == {"tiny-1b": 1, "mid 7B": 1, "big/70b": 2}


def test_embedllm_cost_sources(tmp_path):
  folder = write_embedllm(tmp_path / "e", costs=False)
  with pytest.raises(ValueError,
                     match="a cost per model is required.*costs.csv.*model_name"):
    load_embedllm(folder)
  # Without num_params_b, the one numeric column is the cost (names are
  # stripped); with several, which one is meant is not guessed.
  prices = write_csv(tmp_path / "prices.csv", ["model_name", "note", "usd"],
                     [(m + " ", "n", 2 * v) for m, v in PARAMS.items()])
  np.testing.assert_allclose(load_embedllm(folder, costs=prices).cost,
                             [2.2, 14.0, 141.0], rtol=1e-6)
  prices = write_csv(tmp_path / "prices.csv", ["model_name", "note", "usd", "x"],
                     [(m, "n", 2 * v, 0) for m, v in PARAMS.items()])
  with pytest.raises(ValueError, match=r"it has several: \['usd', 'x'\]"):
    load_embedllm(folder, costs=prices)
  data = load_embedllm(folder, costs={"tiny-1b": 1, "mid 7B": 2, "big/70b": 3})
  np.testing.assert_allclose(data.cost, [1, 2, 3])
  with pytest.raises(ValueError, match="no cost for model 'big/70b'"):
    load_embedllm(folder, costs={"tiny-1b": 1, "mid 7B": 2})


def test_embedllm_duplicates(tmp_path):
  folder = write_embedllm(tmp_path / "e")
  val = os.path.join(folder, "val.csv")
  header = ["model_id", "prompt_id", "label"]
  write_csv(val, header, [(2, 0, 1)])  # repeats a train label: harmless
  assert_cells(load_embedllm(folder), embedllm_expected())
  write_csv(val, header, [(2, 3, 1), (1, 3, 0)])  # fills one cell, conflicts on one
  with pytest.raises(ValueError, match=r"'mid 7B' on prompt_id 3 twice with "
                     r"different labels \(val.csv data row 2 and test.csv data row 5\)"):
    load_embedllm(folder)


def test_embedllm_embeddings(tmp_path):
  folder = write_embedllm(tmp_path / "e")
  np.save(os.path.join(folder, "embeddings.npy"), np.ones((4, 4)))
  with pytest.raises(ValueError, match="have 4 rows but there are 5 prompts"):
    load_embedllm(folder)
  npz = tmp_path / "by_id.npz"
  np.savez(npz, prompt_ids=np.array([4, 2, 0, 9]), embeddings=np.eye(4))
  with pytest.raises(ValueError, match="2 of 5 prompt ids are missing.*e.g. '1'"):
    load_embedllm(folder, embeddings=npz)
  np.savez(npz, prompt_ids=np.array([4, 2, 0, 9, 3, 1]), embeddings=np.eye(6))
  data = load_embedllm(folder, embeddings=npz)
  np.testing.assert_array_equal(np.argmax(data.embeddings, axis=1), [2, 5, 1, 4, 0])
  os.remove(os.path.join(folder, "embeddings.npy"))
  with pytest.raises(FileNotFoundError, match="embeddings.npy"):
    load_embedllm(folder)


LABEL_HEADER = ["model_id", "prompt_id", "label"]


@pytest.mark.parametrize("file, rows, message", [
    ("train.csv", [["model_id", "prompt_id", "correct"], ["0", "0", "1"]],
     "no column 'label'"),
    ("train.csv", [LABEL_HEADER, ["7", "0", "1"]],
     "model_id.*has 7.*not in model_order.csv"),
    ("train.csv", [LABEL_HEADER, ["0", "99", "1"]],
     "prompt_id.*has 99.*not in question_order.csv"),
    ("train.csv", [LABEL_HEADER, ["0", "0", "3"]],
     r"'label' must lie in \[0, 1\]"),
    ("train.csv", [LABEL_HEADER, ["0", "x", "1"]],
     "'prompt_id' must hold numbers, got 'x'"),
    ("model_order.csv", [["model_id", "model_name"], ["0", "a"], ["1", "a"]],
     "'model_name' must be unique, but 'a' appears more than once"),
])
def test_embedllm_bad_files(tmp_path, file, rows, message):
  folder = write_embedllm(tmp_path / "e")
  write_csv(os.path.join(folder, file), rows[0], rows[1:])
  with pytest.raises(ValueError, match=message):
    load_embedllm(folder)


def test_embedllm_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="directory not found"):
    load_embedllm(tmp_path / "nowhere")
  folder = write_embedllm(tmp_path / "e")
  for split in ("train.csv", "test.csv"):
    os.remove(os.path.join(folder, split))
  with pytest.raises(FileNotFoundError, match="none of.*train.csv"):
    load_embedllm(folder)
  os.remove(os.path.join(folder, "model_order.csv"))
  with pytest.raises(FileNotFoundError, match="model_order.csv"):
    load_embedllm(folder)


# ----------------------------------------------------------------------- long

# (prompt, model, correct, cost); q2 comes first, so it is prompt 0.
LONG_ROWS = [
    ("q2", "m1", "1", "0.5"), ("q2", "m2", "0", "1.5"),
    ("q1", "m2", "true", "2.5"), ("q1", "m1", "0.25", "0.75"),
    ("q3", "m2", "", ""),     # a missing label, without a cost
    ("q3", "m1", "0", "1.0"), ("q2", "m1", "1.0", "0.5"),  # repeats, same values
    ("q4", "m1", "1", "0.25"),  # no m2 row for q4
]


def long_expected():
  scores = {("q3", "m2"): None, ("q4", "m2"): None}
  costs = {("q4", "m2"): np.mean([1.5, 2.5])}  # unpriced cell: the model's mean
  for p, m, y, c in LONG_ROWS:
    if y:
      scores[(p, m)] = 1.0 if y == "true" else float(y)
      costs[(p, m)] = float(c)
  return scores, costs


def write_long(tmp_path, rows=LONG_ROWS):
  path = write_csv(tmp_path / "long.csv", ["prompt_id", "model", "correct", "usd"],
                   rows)
  # Ids as a unicode array, shuffled, with extras: aligned by id.
  ids = ["q9", "q4", "q1", "q3", "q2"]
  np.savez(tmp_path / "emb.npz", ids=np.array(ids),
           embeddings=np.stack([embedding_of(i) for i in ids]))
  return path, tmp_path / "emb.npz"


def test_long_round_trip(tmp_path):
  path, emb = write_long(tmp_path)
  data = load_long(path, embeddings=emb, cost_column="usd")
  assert list(data.prompt_ids) == ["q2", "q1", "q3", "q4"]
  assert data.model_names == ("m1", "m2")
  assert_cells(data, *long_expected())
  for i, prompt in enumerate(data.prompt_ids):
    np.testing.assert_array_equal(data.embeddings[i], embedding_of(prompt))
  data = load_long(path, embeddings=emb, costs={"m1": 1.0, "m2": 3.0, "m3": 9.0})
  np.testing.assert_array_equal(data.cost, [1.0, 3.0])
  costs = write_csv(tmp_path / "costs.csv", ["model_name", "cost"],
                    [("m2", 4), ("m1", 2)])
  np.testing.assert_array_equal(
      load_long(path, embeddings=emb, costs=costs).cost, [2, 4])


def test_long_averages_repeated_rows_into_a_score_and_its_count(tmp_path):
  """A log that asks an LLM the same prompt several times: each cell's
  score and cost are the means of its rows (a dict-of-lists oracle), and
  label_counts says how many scores each mean holds."""
  rng = np.random.default_rng(0)
  prompts, models = [f"q{i}" for i in range(6)], ["a", "b", "c"]
  rows = []
  for _ in range(80):
    score = "" if rng.random() < 0.1 else f"{rng.integers(0, 2)}"
    rows.append((str(rng.choice(prompts)), str(rng.choice(models)), score,
                 f"{rng.uniform(0.1, 2.0):.4f}"))
  path = write_csv(tmp_path / "log.csv", ["prompt_id", "model", "correct",
                                          "usd"], rows)
  order = list(dict.fromkeys(r[0] for r in rows))
  np.save(tmp_path / "emb.npy", np.arange(len(order) * 2, dtype=np.float32)
          .reshape(-1, 2))
  data = load_long(path, embeddings=tmp_path / "emb.npy", cost_column="usd")
  names = data.model_names
  for i, prompt in enumerate(data.prompt_ids):
    for j, model in enumerate(names):
      cell = [r for r in rows if r[0] == prompt and r[1] == model]
      scores = [float(r[2]) for r in cell if r[2]]
      assert data.label_counts[i, j] == len(scores)
      assert data.mask[i, j] == bool(scores)
      if scores:
        np.testing.assert_allclose(data.loss[i, j], 1 - np.mean(scores),
                                   rtol=1e-6)
      if cell:
        np.testing.assert_allclose(data.cost[i, j],
                                   np.mean([float(r[3]) for r in cell]),
                                   rtol=1e-6)
  assert data.label_counts.sum() == sum(1 for r in rows if r[2])
  assert data.select_prompts([1, 0]).label_counts.shape == (2, len(names))
  assert data.select_models([2]).label_counts.shape == (len(order), 1)


@pytest.mark.parametrize("rows, kwargs, message", [
    ([("q1", "m1", "1", "")], {"cost_column": "usd"},
     "'usd' is empty or NaN in data row 1, which has a label"),
    (LONG_ROWS, {}, "exactly one of cost_column .*and costs .*neither was given"),
    (LONG_ROWS, {"cost_column": "usd", "score_column": "score"}, "no column 'score'"),
    (LONG_ROWS, {"cost_column": "usd", "model_column": "llm"}, "no column 'llm'"),
    ([("q1", "m1", "1.5", "1")], {"cost_column": "usd"}, r"must lie in \[0, 1\]"),
    ([("q1", "", "1", "1")], {"cost_column": "usd"}, "'model' is empty in data row 1"),
    # Costs kept in float32 must not become infinity or 0 there.
    ([("q1", "m1", "1", "1"), ("q2", "m1", "1", "1e39")], {"cost_column": "usd"},
     r"'usd' holds 1e\+39 in data row 2, outside the float32"),
    ([("q1", "m1", "1", "1e-46")], {"cost_column": "usd"},
     r"'usd' holds 1e-46 in data row 1, outside the float32"),
    ([("q1", "m1", "1", "1")], {"costs": {"m1": 1e-50}},
     r"cost of model 'm1' is 1e-50, outside the float32"),
    ([("q1", "m1", "1", "1")], {"costs": {"m1": 1e39}},
     r"cost of model 'm1' is 1e\+39, outside the float32"),
])
def test_long_errors(tmp_path, rows, kwargs, message):
  path, emb = write_long(tmp_path, rows)
  with pytest.raises(ValueError, match=message):
    load_long(path, embeddings=emb, **kwargs)


def test_long_needs_a_score_column(tmp_path):
  path = write_csv(tmp_path / "t.csv", ["prompt_id", "model", "value"], [("a", "b", 1)])
  with pytest.raises(ValueError, match="no score column.*'score', 'correct', 'label'"):
    load_long(path, embeddings=tmp_path / "e.npy", costs={"b": 1})


def test_long_parquet(tmp_path):
  if importlib.util.find_spec("pyarrow") is None:
    with pytest.raises(ImportError, match="needs pyarrow"):
      (tmp_path / "t.parquet").write_bytes(b"PAR1")
      load_long(tmp_path / "t.parquet", embeddings=tmp_path / "e.npy", costs={})
    pytest.skip("pyarrow is not installed, so Parquet cannot be read")
  import pyarrow as pa
  import pyarrow.parquet as pq
  _, emb = write_long(tmp_path)
  columns = list(zip(*LONG_ROWS))
  table = pa.table({
      "prompt_id": list(columns[0]), "model": list(columns[1]),
      "score": [None if y == "" else 1.0 if y == "true" else float(y)
                for y in columns[2]],
      "cost": [None if c == "" else float(c) for c in columns[3]]})
  pq.write_table(table, tmp_path / "long.parquet")
  data = load_long(tmp_path / "long.parquet", embeddings=emb, cost_column="cost")
  assert_cells(data, *long_expected())


# ----------------------------------------------------------------- embeddings

def test_load_embeddings_layouts(tmp_path):
  matrix = np.arange(12, dtype=np.float64).reshape(3, 4)
  np.save(tmp_path / "e.npy", matrix)
  out = load_embeddings(tmp_path / "e.npy", ["a", "b", "c"])
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, matrix)
  with pytest.raises(ValueError, match="have 3 rows but there are 2 prompts"):
    load_embeddings(tmp_path / "e.npy", ["a", "b"])
  np.savez(tmp_path / "one.npz", anything=matrix)
  np.testing.assert_array_equal(load_embeddings(tmp_path / "one.npz", [0, 1, 2]), matrix)
  np.savez(tmp_path / "ids.npz", prompt_id=np.array([10, 11, 12]), embedding=matrix)
  np.testing.assert_array_equal(load_embeddings(tmp_path / "ids.npz", ["12", "10"]),
                                matrix[[2, 0]])
  with pytest.raises(ValueError, match="1 of 2 prompt ids are missing.*e.g. '13'"):
    load_embeddings(tmp_path / "ids.npz", ["12", "13"])


def test_load_embeddings_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="embeddings file not found"):
    load_embeddings(tmp_path / "none.npy", [0])
  bad = np.ones((2, 3))
  bad[1, 2] = np.nan
  np.save(tmp_path / "nan.npy", bad)
  with pytest.raises(ValueError, match="NaN or infinity.*prompt id 'b'"):
    load_embeddings(tmp_path / "nan.npy", ["a", "b"])
  # Read on its own, the file has no ids: the array's row, counted from 0.
  with pytest.raises(ValueError, match="first at array row 1, counting from 0;"):
    read_embeddings(tmp_path / "nan.npy")
  np.save(tmp_path / "obj.npy", np.array([[1.0], [None]], dtype=object))
  with pytest.raises(ValueError, match=r"object array \(pickled data\), which is never loaded"):
    load_embeddings(tmp_path / "obj.npy", ["a", "b"])
  np.savez(tmp_path / "two.npz", a=bad, b=bad)
  with pytest.raises(ValueError, match="expected a single"):
    load_embeddings(tmp_path / "two.npz", ["a", "b"])
  np.savez(tmp_path / "dup.npz", ids=np.array(["a", "a"]), embeddings=np.ones((2, 3)))
  with pytest.raises(ValueError, match="must be unique.*'a'"):
    load_embeddings(tmp_path / "dup.npz", ["a"])
  np.save(tmp_path / "vec.npy", np.ones(3))
  with pytest.raises(ValueError, match=r"2-d array \[n, d\]"):
    load_embeddings(tmp_path / "vec.npy", ["a", "b", "c"])
  (tmp_path / "e.txt").write_text("1 2")
  with pytest.raises(ValueError, match="must be a .npy or .npz"):
    load_embeddings(tmp_path / "e.txt", ["a"])


# ------------------------------------------------------------------ real data

def real(name):
  root = shared_data_dir()
  if root is None or not os.path.isdir(os.path.join(root, name)):
    pytest.skip("shared data not found at ../shared/data (set UNIROUTE_DATA)")
  return os.path.join(root, name)


@pytest.fixture(scope="module")
def routerbench():
  return load_routerbench(real("routerbench"))


@pytest.fixture(scope="module")
def mmlu_pro():
  return load_embedllm(real("mmlu_pro"))


def test_real_routerbench(routerbench):
  data = routerbench
  assert data.loss.shape == (3178, 11)
  assert data.embeddings.shape == (3178, 384) and data.embeddings.dtype == np.float32
  assert (~data.mask).sum() == 154
  assert sum(missing_labels(data).values()) == 154
  assert data.cost.shape == (3178, 11)
  assert np.all(np.isfinite(data.cost)) and np.all(data.cost >= 0)
  assert len(set(data.prompt_ids)) == 3178
  np.testing.assert_allclose(np.linalg.norm(data.embeddings, axis=1), 1, atol=2e-3)


def test_real_routerbench_merged():
  data = load_routerbench(real("routerbench"), merge_duplicate_ids=True)
  assert data.loss.shape == (3164, 11) and data.embeddings.shape == (3164, 384)
  assert data.mask.all()  # each pair's labels complement each other


def test_real_mmlu_pro(mmlu_pro):
  data = mmlu_pro
  assert data.loss.shape == (12032, 27)
  assert data.embeddings.shape == (12032, 384)
  np.testing.assert_array_equal(data.prompt_ids, np.arange(12032))
  missing = missing_labels(data)
  assert sum(missing.values()) == 1681
  assert missing["DeepSeek-Coder-V2"] == 1681
  assert 1 - data.loss[data.mask].mean() == pytest.approx(0.382, abs=1e-3)
  with open(os.path.join(real("mmlu_pro"), "costs.csv"), newline="") as f:
    params = {r["model_name"]: float(r["num_params_b"]) for r in csv.DictReader(f)}
  np.testing.assert_allclose(data.cost, [params[m] for m in data.model_names],
                             rtol=1e-6)


def test_embedllm_model_names_must_agree_with_model_order(tmp_path):
  """The split files repeat each model's name: one that contradicts
  model_order.csv means ids were mixed up, and is refused by file and row."""
  folder = write_embedllm(tmp_path / "e")
  train = os.path.join(folder, "train.csv")
  with open(train, newline="") as f:
    rows = list(csv.reader(f))
  header, body = rows[0], rows[1:]
  at = header.index("model_name")
  body[1][at] = EMBEDLLM_MODELS[(EMBEDLLM_MODELS.index(body[1][at]) + 1)
                                % len(EMBEDLLM_MODELS)]
  write_csv(train, header, body)
  with pytest.raises(ValueError, match=r"train.csv' data row 2 has model_id "
                                       r"\d+ with model_name '[^']+', but "
                                       r"model_order.csv names model_id \d+ "
                                       r"'[^']+'$"):
    load_embedllm(folder)


@pytest.mark.parametrize("call, match", [
    (lambda p: load_long(None, embeddings=p, costs={}), "path must be a file path"),
    (lambda p: load_long(p, embeddings=None, costs={}), "embeddings must be a file path"),
    (lambda p: load_embeddings(None, ["a"]), "path must be a file path"),
    (lambda p: load_embeddings(p, None), "prompt_ids must be a 1-d sequence"),
    (lambda p: load_embeddings(p, "p1"), "prompt_ids must be a 1-d sequence"),
    (lambda p: load_embeddings(p, np.array("p1")), "prompt_ids must be a 1-d"),
    (lambda p: load_embedllm(3), "directory must be a file path"),
])
def test_wrong_argument_types_name_the_argument(tmp_path, call, match):
  path = tmp_path / "e.npy"
  np.save(path, np.eye(2, dtype=np.float32))
  with pytest.raises(ValueError, match=match):
    call(path)


def test_read_prompts_in_each_format(tmp_path):
  from uniroute_jax.data import read_prompts
  text = tmp_path / "p.txt"
  # \r\n endings, an empty prompt, and characters str.splitlines splits at.
  text.write_bytes("first\r\n\r\nthird\u2028still third\x0cand\n".encode())
  ids, texts = read_prompts(text)
  assert ids.tolist() == ["0", "1", "2"]
  assert texts == ["first", "", "third\u2028still third\x0cand"]
  jsonl = tmp_path / "p.jsonl"
  jsonl.write_text('{"prompt": "a", "id": 7}\n\n{"prompt": "b\\nc", "id": "x"}\n')
  ids, texts = read_prompts(jsonl, id_column="id")
  assert ids.tolist() == ["7", "x"] and texts == ["a", "b\nc"]
  table = tmp_path / "p.csv"
  write_csv(table, ["qid", "question"], [("q1", "one, two"), ("q2", "three")])
  ids, texts = read_prompts(table, column="question", id_column="qid")
  assert ids.tolist() == ["q1", "q2"] and texts == ["one, two", "three"]


@pytest.mark.parametrize("name, content, kwargs, match", [
    ("p.jsonl", '{"prompt": "a"}\nnot json\n', {}, "line 2 is not JSON"),
    ("p.jsonl", '["a"]\n', {}, "line 1 must be a JSON object"),
    ("p.jsonl", '{"text": "a"}\n', {}, "line 1 has no field 'prompt'"),
    ("p.jsonl", '{"prompt": 3}\n', {}, "field 'prompt' must be text"),
    ("p.jsonl", '{"prompt": "a", "id": 1}\n{"prompt": "b", "id": "1"}\n',
     {"id_column": "id"}, "id '1' of prompt 1 is also the id of prompt 0"),
    ("p.csv", "prompt\n", {}, "holds no prompts"),
    ("p.csv", "text\nhi\n", {}, "has no column 'prompt'"),
    ("p.txt", "", {}, "holds no prompts"),
    ("p.txt", "a\n", {"column": "x"}, "column does not apply to a plain-text"),
    ("p.md", "a\n", {}, "must end in one of .txt"),
])
def test_read_prompts_errors_name_the_file_and_line(tmp_path, name, content,
                                                    kwargs, match):
  from uniroute_jax.data import read_prompts
  path = tmp_path / name
  path.write_text(content)
  with pytest.raises(ValueError, match=match):
    read_prompts(path, **kwargs)
  path.write_bytes(b"caf\xe9\n")
  if name.endswith(".txt"):
    with pytest.raises(ValueError, match="is not UTF-8 text"):
      read_prompts(path)


@pytest.mark.parametrize("name, content, kwargs, match", [
    ("p.csv", 'id,prompt\n1,"He said ""hi\n2,What is 2+2?\n', {},
     "a quoted field is never closed"),
    ("p.jsonl", '{"prompt": "a", "prompt": "b"}\n', {}, "has the field 'prompt' twice"),
    ("p.jsonl", '{"prompt": "bad \\ud800 half"}\n', {}, "prompt 0 is not valid Unicode"),
    ("p.jsonl", '{"prompt": "a", "id": ""}\n', {"id_column": "id"},
     "must be a non-empty string or an integer"),
    ("p.jsonl", '{"prompt": "a", "id": NaN}\n', {"id_column": "id"},
     "must be a non-empty string or an integer"),
    ("p.jsonl", '{"prompt": "a", "id": 1.5}\n', {"id_column": "id"},
     "must be a non-empty string or an integer"),
    ("p.csv", "id,prompt\n1,a\n1,b\n", {"id_column": "id"},
     "id '1' of prompt 1 is also the id of prompt 0"),
    ("p.txt", "one\rtwo\rthree\r", {}, "ends its lines with \\\\r alone"),
    ("p.csv", "id,prompt\n1,a\n", {"column": ""}, "has no column ''"),
    ("p.csv", "id,prompt\n1,a\n", {"column": ["prompt"]}, "column must be a column name"),
])
def test_read_prompts_hostile_files(tmp_path, name, content, kwargs, match):
  from uniroute_jax.data import read_prompts
  path = tmp_path / name
  path.write_text(content, encoding="utf-8", errors="surrogatepass")
  with pytest.raises(ValueError, match=match):
    read_prompts(path, **kwargs)


def test_read_prompts_ids_are_stripped_text_and_folders_refused(tmp_path):
  from uniroute_jax.data import read_prompts
  path = tmp_path / "p.jsonl"
  path.write_text('{"prompt": "a", "id": " 7 "}\n{"prompt": "b", "id": 8}\n')
  assert read_prompts(path, id_column="id")[0].tolist() == ["7", "8"]
  (tmp_path / "dir.txt").mkdir()
  with pytest.raises(ValueError, match="is a folder"):
    read_prompts(tmp_path / "dir.txt")


def test_long_format_columns_must_differ(tmp_path):
  path = write_csv(tmp_path / "l.csv", ["prompt_id", "model", "usd"],
                   [("q1", "m1", "1")])
  np.save(tmp_path / "e.npy", np.eye(1, 2, dtype=np.float32))
  with pytest.raises(ValueError, match="score_column and cost_column name the same "
                                       "column 'usd'"):
    load_long(path, embeddings=tmp_path / "e.npy", score_column="usd",
              cost_column="usd")


def test_long_embeds_prompt_text_with_any_callable(tmp_path):
  """embeddings= a callable: it gets each prompt's text once, in prompt
  order (the ids themselves, or a text column), and its rows are the
  embeddings; a prompt with two texts is refused."""
  rows = [("q1", "What is 2+2?", "a", 1, 0.1), ("q1", "What is 2+2?", "b", 0, 0.2),
          ("q2", "Name a colour.", "a", 0, 0.1), ("q2", "Name a colour.", "b", 1, 0.2)]
  path = write_csv(tmp_path / "log.csv", ["prompt_id", "text", "model", "correct",
                                          "cost"], rows)
  seen = []

  def embed(texts):
    seen.append(list(texts))
    return np.array([[len(t), t.count(" ")] for t in texts], np.float32)

  data = load_long(path, embeddings=embed, text_column="text", cost_column="cost")
  assert seen == [["What is 2+2?", "Name a colour."]]
  np.testing.assert_array_equal(data.embeddings, [[12, 2], [14, 2]])
  assert list(data.prompt_ids) == ["q1", "q2"]
  by_id = load_long(path, embeddings=embed, cost_column="cost")
  assert seen[-1] == ["q1", "q2"]
  np.testing.assert_array_equal(by_id.embeddings, [[2, 0], [2, 0]])
  clash = write_csv(tmp_path / "clash.csv", ["prompt_id", "text", "model",
                                             "correct", "cost"],
                    rows[:3] + [("q2", "Another text.", "b", 1, 0.2)])
  with pytest.raises(ValueError, match="gives prompt 'q2' two texts, in data "
                                       "row 3 and data row 4"):
    load_long(clash, embeddings=embed, text_column="text", cost_column="cost")
  with pytest.raises(ValueError, match=r"returned shape \(3,\) for 2 texts"):
    load_long(path, embeddings=lambda t: np.zeros(3), cost_column="cost")
