"""colab/*.ipynb keep the shape the Colab issue asks of them, checked without executing them
(scripts/run_notebooks.py executes them): stored without outputs, an opening cell that says what the
notebook shows and how long it takes on CPU, GPU and TPU, one install cell that is the only setup, and one
cell of parameters tagged for papermill. Read as plain JSON, and validated against nbformat's schema."""

import glob
import json
import os
import re

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))
REPO_LINE = 'REPO = "https://github.com/t2v-jax/t2v_jax.git"'
# A pip install, however a cell spells it: !pip, %pip, or pip run through subprocess.
PIP = re.compile(r"[!%]pip\b|\bpip install\b|[\"']pip[\"']")
# A duration after the name, on the same line: "CPU, 2 cores: about 3 min".
DURATION = r"\b{}\b[^\n]*?\d\s*(?:s|sec|seconds|min|minutes|h|hours)\b"


def _load(path):
    with open(path) as f:
        return json.load(f)


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _code_cells(notebook):
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def _ids(paths):
    return [os.path.basename(path) for path in paths]


def test_the_five_notebooks_exist():
    assert {"quickstart.ipynb", "allegro.ipynb", "long_video.ipynb", "sharding.ipynb",
            "retnet_speed.ipynb"} <= set(_ids(NOTEBOOKS))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_is_nbformat_4_with_the_keys_jupyter_and_colab_read(path):
    notebook = _load(path)
    assert notebook["nbformat"] == 4 and isinstance(notebook["metadata"], dict)
    assert notebook["metadata"].get("kernelspec", {}).get("name") == "python3", "kernelspec python3: what nbclient starts"
    for index, cell in enumerate(notebook["cells"]):
        assert cell["cell_type"] in ("markdown", "code", "raw"), f"cell {index}"
        assert isinstance(cell["metadata"], dict) and isinstance(cell["source"], (str, list)), f"cell {index}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_passes_the_nbformat_schema(path):
    nbformat.validate(nbformat.read(path, as_version=4))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_is_stored_without_outputs(path):
    for index, cell in enumerate(_load(path)["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, (
                f"cell {index} keeps outputs or an execution count: clear all outputs before committing")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_opens_with_what_it_shows_and_its_time_on_cpu_gpu_and_tpu(path):
    first = _load(path)["cells"][0]
    assert first["cell_type"] == "markdown"
    text = _source(first)
    assert text.startswith("# "), "the first cell opens with the notebook's title"
    for device in ("CPU", "GPU", "TPU"):
        assert re.search(DURATION.format(device), text), f"no run time for {device} in the first cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_the_install_cell_is_the_first_code_cell_and_the_only_setup(path):
    install, *others = (_source(cell) for cell in _code_cells(_load(path)))
    assert REPO_LINE in install.splitlines(), f"the install cell names the repository: {REPO_LINE}"
    assert PIP.search(install) and "REPO" in install.replace(REPO_LINE, ""), "installs t2v_jax from REPO"
    assert '"jax[tpu]"' in install and re.search(r'"jax\[cuda1\d\]"', install), (
        "installs jax's TPU or CUDA build by the runtime")
    assert 'find_spec("t2v_jax")' in install, "skips the installs where t2v_jax is importable (CI)"
    for index, source in enumerate(others, start=2):
        assert not PIP.search(source) and "git clone" not in source, f"code cell {index} installs too"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_one_parameters_cell_right_after_the_install_cell(path):
    code = _code_cells(_load(path))
    tagged = [index for index, cell in enumerate(code) if "parameters" in cell["metadata"].get("tags", [])]
    assert tagged == [1], f"code cells tagged 'parameters': {tagged}; expected exactly the second code cell"


def test_the_readme_opens_every_notebook_in_colab():
    """README's notebooks table links each colab/*.ipynb through Colab's GitHub URL for REPO, on main."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    owner_and_name = re.search(r'github\.com/([^"]+?)\.git"', REPO_LINE).group(1)
    links = set(re.findall(rf"https://colab\.research\.google\.com/github/{re.escape(owner_and_name)}/blob/main/"
                           r"(colab/[\w.-]+\.ipynb)\)", readme))
    assert links == {os.path.relpath(path, ROOT) for path in NOTEBOOKS}
