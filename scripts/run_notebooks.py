"""Executes the Colab notebooks, each in a fresh kernel, as CI does after the test suite.

  pip install -e ".[notebooks]"
  python scripts/run_notebooks.py                                     # every colab/*.ipynb
  python scripts/run_notebooks.py colab/sharding.ipynb --timeout=600 --out=runs/notebooks

Each notebook runs from the repository root at the tiny parameters its own parameters cell picks on a
CPU; its install cell finds t2v_jax importable and installs nothing. The notebooks in colab/ are stored
without outputs, so the executed copies are written only under --out, never back. Every notebook runs
even after one fails; then the exit status is 1 and each failure names its notebook, the cell's first
lines and the error.
"""

import glob
import os
import re
import sys
import time

import nbformat
from absl import app, flags
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from t2v_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_TIMEOUT = flags.DEFINE_integer("timeout", 600, "Seconds each notebook may run, kernel start included.")
_OUT = flags.DEFINE_string("out", None, "Folder for the executed copies, outputs included (optional).")

SOURCE_LINES_SHOWN = 3
# IPython colours its tracebacks; a CI log shows the escape codes as text.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def _shown_path(path: str) -> str:
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def _source_head(cell) -> str:
    lines = cell.source.splitlines()
    head = "\n".join(f"    {line}" for line in lines[:SOURCE_LINES_SHOWN])
    return head + ("\n    ..." if len(lines) > SOURCE_LINES_SHOWN else "")


def _error_text(error: Exception) -> str:
    """The exception's type and message; the whole traceback is in the executed copy under --out."""
    if isinstance(error, CellExecutionError):
        return f"{error.ename}: {ANSI_ESCAPE.sub('', error.evalue)}"
    return f"{type(error).__name__}: {ANSI_ESCAPE.sub('', str(error)).strip().splitlines()[0]}"


def run_notebook(path: str, timeout: int, out_dir: str | None) -> str | None:
    """Executes one notebook; prints its wall time and returns None, or a message naming what failed.

    nbclient's timeout is per cell, so each cell gets what is left of the notebook's budget."""
    notebook = nbformat.read(path, as_version=4)
    running = {}  # the cell being executed, named when execution stops
    started = time.perf_counter()
    deadline = started + timeout
    client = NotebookClient(
        notebook, kernel_name="python3", resources={"metadata": {"path": ROOT}},
        timeout_func=lambda cell: max(1, int(deadline - time.perf_counter())),
        on_cell_start=lambda cell, cell_index: running.update(cell=cell, index=cell_index))
    failure = None
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
        if isinstance(error, CellTimeoutError):
            error = TimeoutError(f"the notebook ran past --timeout={timeout} s")
        failure = (f"{_shown_path(path)}, cell {running['index'] + 1} of {len(notebook.cells)}:\n"
                   f"{_source_head(running['cell'])}\n  {_error_text(error)}")
    seconds = time.perf_counter() - started
    print(f"{_shown_path(path)}: {'FAILED' if failure else 'ok'} in {seconds:.0f} s", flush=True)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        nbformat.write(notebook, os.path.join(out_dir, os.path.basename(path)))
    return failure


def main(argv):
    paths = [os.path.abspath(path) for path in argv[1:]] or sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))
    if not paths:
        raise app.UsageError("no notebooks: colab/ holds no .ipynb and none were named")
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise app.UsageError(f"no such notebook: {', '.join(missing)}")
    failures = [failure for path in paths if (failure := run_notebook(path, _TIMEOUT.value, _OUT.value))]
    if failures:
        print(f"\n{len(failures)} of {len(paths)} notebooks failed:\n" + "\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
