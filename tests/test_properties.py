"""Property-based hostile input: whatever bytes a file holds and whatever a
caller passes, the answer is the documented ``ValueError`` (or
``FileNotFoundError``) or a valid result; never another exception, a hang
or a partial file.

Example counts are kept small for the suite's time budget; set
``HYPOTHESIS_PROFILE=long`` for a longer search.
"""

import csv
import io
import os

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import uniroute_jax as ur
from uniroute_jax import Router
from uniroute_jax.data import load_embedllm, load_long, read_embeddings

settings.register_profile(
    "suite", max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture,
                           HealthCheck.too_slow])
settings.register_profile(
    "long", max_examples=2000, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture,
                           HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

DOCUMENTED = (ValueError, FileNotFoundError)


def answer(fn, *args, **kwargs):
  """fn's result, or None when it raised a documented error."""
  try:
    return fn(*args, **kwargs)
  except DOCUMENTED as err:
    assert str(err), "an error must say what is wrong"
    return None


# --------------------------------------------------------------- valid files


def long_csv() -> bytes:
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(["prompt_id", "model", "score", "usd"])
  writer.writerows([("q1", "a", "1", "0.5"), ("q1", "b", "0", "1.5"),
                    ("q2", "a", "0.25", "0.5"), ("q2", "b", "", "")])
  return text.getvalue().encode()


def embeddings_npz() -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, prompt_ids=np.array(["q1", "q2"]),
           embeddings=np.eye(2, 3, dtype=np.float32))
  return buffer.getvalue()


def embeddings_npy() -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, np.eye(2, 3, dtype=np.float32))
  return buffer.getvalue()


@pytest.fixture(scope="module")
def router_bytes(tmp_path_factory):
  path = tmp_path_factory.mktemp("router") / "r.npz"
  x = np.random.default_rng(0).normal(size=(12, 3))
  router = Router.from_kmeans(jax.random.key(0), x, num_clusters=2)
  router = router.add_models(["a", "b"], x, np.random.default_rng(1).random((12, 2)),
                             np.array([1.0, 2.0]))
  router.save(path)
  return path.read_bytes()


def check_routing_data(data):
  loss, mask = np.asarray(data.loss), np.asarray(data.mask)
  assert loss.shape == mask.shape and loss.shape[0] == data.embeddings.shape[0]
  assert np.all((loss >= 0) & (loss <= 1)) and np.all(np.isfinite(data.embeddings))
  assert np.all(np.asarray(data.cost) >= 0)


# ----------------------------------------------------- every truncation


@pytest.mark.parametrize("kind", ["long", "npz", "npy", "router"])
def test_every_truncation_of_a_valid_file(tmp_path, router_bytes, kind):
  """Cut a valid file at every byte offset: each prefix loads validly or
  raises the documented error."""
  blob = {"long": long_csv, "npz": embeddings_npz, "npy": embeddings_npy,
          "router": lambda: router_bytes}[kind]()
  npy = tmp_path / "emb.npy"
  npy.write_bytes(embeddings_npy())
  path = tmp_path / ("data.csv" if kind == "long" else f"f.{'npy' if kind == 'npy' else 'npz'}")
  # Every offset for the small files; the router file in a stride that still
  # cuts every zip member header and the metadata.
  offsets = range(0, len(blob) + 1, 1 if kind != "router" else 3)
  for cut in offsets:
    path.write_bytes(blob[:cut])
    if kind == "long":
      data = answer(load_long, path, embeddings=npy, cost_column="usd")
      if data is not None:
        check_routing_data(data)
    elif kind == "router":
      loaded = answer(Router.load, path)
      assert loaded is None or cut == len(blob)
    else:
      out = answer(read_embeddings, path)
      if out is not None:
        assert np.all(np.isfinite(out[1]))


# ----------------------------------------------------------- random bytes


@given(blob=st.binary(max_size=400), suffix=st.sampled_from(
    [".csv", ".npy", ".npz", ".router.npz"]))
def test_random_bytes_are_refused_cleanly(tmp_path, blob, suffix):
  path = tmp_path / f"f{suffix}"
  path.write_bytes(blob)
  npy = tmp_path / "emb.npy"
  npy.write_bytes(embeddings_npy())
  if suffix == ".csv":
    data = answer(load_long, path, embeddings=npy, costs={"a": 1.0})
    if data is not None:
      check_routing_data(data)
  elif suffix == ".router.npz":
    assert answer(Router.load, path) is None
  else:
    answer(read_embeddings, path)


@given(flips=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)),
                      min_size=1, max_size=4))
def test_corrupted_bytes_are_refused_cleanly(tmp_path, router_bytes, flips):
  """Flip bytes anywhere in a router and an embeddings archive: zip and
  NumPy parsers raise many types on such files; all become ValueError."""
  for name, blob, load in (("r.npz", router_bytes, Router.load),
                           ("e.npz", embeddings_npz(), read_embeddings)):
    data = bytearray(blob)
    for at, value in flips:
      data[at % len(data)] = value
    path = tmp_path / name
    path.write_bytes(bytes(data))
    answer(load, path)


# ------------------------------------------------ wrong text, per column

cells = st.one_of(
    st.sampled_from(["", " ", "nan", "NaN", "inf", "-inf", "1e400", "-0", "0",
                     "1", "0.5", "TRUE", "false", "1e-1", "2", "-1", "x",
                     "\u00e9", "\x00", '"', "a,b", "1\n2"]),
    st.text(max_size=6))


@given(rows=st.lists(st.tuples(cells, cells, cells, cells), min_size=1,
                     max_size=6),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
def test_long_tables_with_wrong_cells(tmp_path, rows, encoding):
  """Any cell text in any column, in several encodings: a valid dataset or
  the documented error, never a wrong one."""
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(["prompt_id", "model", "score", "usd"])
  writer.writerows(rows)
  path = tmp_path / "t.csv"
  try:
    path.write_bytes(text.getvalue().encode(encoding))
  except UnicodeEncodeError:
    return
  ids = sorted({r[0].strip() for r in rows if r[0].strip()})
  emb = tmp_path / "e.npz"
  np.savez(emb, prompt_ids=np.array(ids or ["none"], dtype=str),
           embeddings=np.ones((max(1, len(ids)), 2), np.float32))
  for kwargs in ({"cost_column": "usd"},
                 {"costs": {r[1].strip(): 1.0 for r in rows}}):
    data = answer(load_long, path, embeddings=emb, **kwargs)
    if data is not None:
      check_routing_data(data)


@given(labels=st.lists(st.tuples(st.sampled_from(["0", "1", "9", "-1", "x", ""]),
                                 st.sampled_from(["0", "1", "4", "-2", "a", ""]),
                                 cells), min_size=1, max_size=6))
def test_embedllm_folders_with_wrong_cells(tmp_path, labels):
  folder = tmp_path / "e"
  folder.mkdir(exist_ok=True)
  (folder / "model_order.csv").write_text("model_id,model_name\n0,a\n1,b\n")
  (folder / "question_order.csv").write_text(
      "prompt_id,prompt\n" + "".join(f"{i},q{i}\n" for i in range(5)))
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(["model_id", "prompt_id", "label"])
  writer.writerows(labels)
  (folder / "train.csv").write_text(text.getvalue())
  (folder / "costs.csv").write_text("model_name,cost\na,1\nb,2\n")
  np.save(folder / "embeddings.npy", np.eye(5, 3, dtype=np.float32))
  data = answer(load_embedllm, folder)
  if data is not None:
    check_routing_data(data)


# ------------------------------------- argument checks of public functions

dtypes = st.sampled_from([np.float32, np.float64, np.int32, np.bool_,
                          np.complex64, np.str_, object])
specials = st.sampled_from([0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e30,
                            -1e30, 0.5])


@st.composite
def arrays(draw, max_dims=3):
  shape = tuple(draw(st.lists(st.integers(0, 4), max_size=max_dims)))
  dtype = draw(dtypes)
  size = int(np.prod(shape)) if shape else 1
  values = draw(st.lists(specials, min_size=size, max_size=size))
  base = np.asarray(values, np.float64).reshape(shape)
  if dtype is np.str_:
    return base.astype(str)
  if dtype is object:
    return base.astype(object)
  with np.errstate(invalid="ignore", over="ignore"):
    return base.astype(dtype)


def values(draw, shape, dtype, low=-1.0, high=1.0):
  """An array of ``shape`` mixing ordinary values and hostile ones."""
  size = int(np.prod(shape)) if shape else 1
  ordinary = st.floats(low, high, allow_nan=False, width=32)
  hostile = draw(st.integers(0, 3)) == 0   # a quarter of the arrays
  picked = draw(st.lists(st.one_of(ordinary, specials) if hostile else ordinary,
                         min_size=size, max_size=size))
  with np.errstate(invalid="ignore", over="ignore"):
    return np.asarray(picked, np.float64).reshape(shape).astype(dtype)


@st.composite
def routing_arguments(draw):
  """Mostly well-formed (membership, psi, cost, lambdas), each argument
  replaced by a random array with some probability: most examples reach
  the numerics, the others the argument checks."""
  n, k, m, lam = (draw(st.integers(0, 4)), draw(st.integers(1, 3)),
                  draw(st.integers(1, 3)), draw(st.integers(0, 3)))
  if draw(st.booleans()):
    membership = np.asarray(draw(st.lists(st.integers(-1, k), min_size=n,
                                          max_size=n)), np.int32)
  else:
    membership = np.abs(values(draw, (n, k), np.float32, 0.0, 1.0))
  args = [membership, values(draw, (k, m), np.float32, 0.0, 1.0),
          np.abs(values(draw, (m,) if draw(st.booleans()) else (n, m),
                        np.float32, 0.0, 10.0)),
          np.abs(values(draw, (lam,) if lam else (), np.float32, 0.0, 5.0))]
  for i in range(4):
    if draw(st.integers(0, 4)) == 0:
      args[i] = draw(arrays(2))
  return args


@given(args=routing_arguments())
def test_routing_arguments(args):
  """route: random shapes, dtypes and values give the documented error or
  a result of the documented shape with choices in [-1, m); checked()
  agrees or names the broken precondition."""
  membership, psi, cost, lambdas = args
  result = answer(ur.route, membership, psi, cost, lambdas)
  event("valid" if result is not None else "refused")
  if result is not None:
    choice = np.asarray(result.choice)
    assert np.all((choice >= -1) & (choice < psi.shape[1]))
    assert choice.shape[-1] == membership.shape[0]
    checked = answer(ur.checked(ur.route), membership, psi, cost, lambdas)
    if checked is not None:
      np.testing.assert_array_equal(np.asarray(checked.choice), choice)


@given(x=arrays(2), k=st.one_of(st.integers(-1, 5), st.just("3"), st.none()))
def test_kmeans_arguments(x, k):
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)   # fewer distinct points
    fit = answer(ur.kmeans, jax.random.key(0), x, num_clusters=k)
  if fit is not None:
    assert np.isfinite(float(fit.inertia))
    assert np.all(np.isfinite(np.asarray(fit.centroids)))


@st.composite
def pool_arguments(draw):
  n, m = draw(st.integers(0, 6)), draw(st.sampled_from([0, 1, 2, 2, 3]))
  args = [values(draw, (n, m), np.float32, 0.0, 1.0),
          np.abs(values(draw, (m,), np.float32, 0.0, 10.0)),
          None if draw(st.booleans()) else values(draw, (n, m), np.float32) > 0]
  for i in range(3):
    if draw(st.integers(0, 4)) == 0:
      args[i] = draw(arrays(2))
  return args


@given(args=pool_arguments())
def test_router_add_models_arguments(args):
  """Router.add_models on host data: the documented error, or a pool whose
  Psi is finite and whose routes are valid LLMs."""
  loss, cost, mask = args
  x = np.random.default_rng(0).normal(size=(6, 2))
  router = Router.from_kmeans(jax.random.key(0), x, num_clusters=2)
  m = loss.shape[1] if loss.ndim == 2 else 1
  names = [f"llm{j}" for j in range(m)]
  embeddings = x[:loss.shape[0]] if loss.ndim >= 1 else x
  out = answer(router.add_models, names, embeddings, loss, cost, mask=mask)
  event("valid" if out is not None else "refused")
  if out is not None:
    assert out.num_models == m
    assert np.all(np.isfinite(np.asarray(out.psi)))
    chosen = np.asarray(out.route(x, np.array([0.0, 1.0])).choice)
    assert np.all((chosen >= 0) & (chosen < m))


@given(true_loss=arrays(2), cost=arrays(1), weights=st.one_of(st.none(), arrays(1)))
def test_deferral_curve_arguments(true_loss, cost, weights):
  curve = answer(ur.deferral_curve, true_loss, true_loss, cost, weights=weights)
  if curve is not None:
    for leaf in jax.tree.leaves(curve):
      assert np.asarray(leaf).dtype != object
