"""The reproduction notebook runs top to bottom, so it never rots."""

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = pathlib.Path(__file__).parents[1] / "notebooks" / "reproduce_paper.ipynb"


@pytest.mark.slow
def test_reproduce_paper_notebook_runs(monkeypatch):
  monkeypatch.setenv("UNIROUTE_NOTEBOOK_TRIALS", "1")
  monkeypatch.setenv("UNIROUTE_NOTEBOOK_PROMPTS", "3000")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
      notebook, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  client.execute()
  outputs = "".join(
      output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
      for output in cell.get("outputs", []))
  assert "UniRoute (K-means)" in outputs and "MLP (clairvoyant)" in outputs
  assert "K per trial:" in outputs
  errors = [o for c in notebook.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors
