"""What ``pip install skpatch`` brings, and the messages where it is not enough.

Read from ``pyproject.toml`` (the installed metadata may predate the tree):
Pillow is a core dependency, so an image folder loads after a plain install,
and no extra lists a second faiss wheel beside the core faiss-cpu (both would
write the one ``faiss`` package). GPU faiss is a documented replacement step,
and asking for GPU indexes without it is an error naming that step.
"""

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from skpatch.datasets import load_image_folder
from skpatch.utils import _faiss

ROOT = Path(__file__).resolve().parents[1]


def _project():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _names(requirements):
    from packaging.requirements import Requirement

    return [Requirement(r).name.lower().replace("_", "-") for r in requirements]


def test_pillow_is_a_core_dependency():
    assert "pillow" in _names(_project()["dependencies"])


def test_one_faiss_wheel_whatever_the_extras():
    project = _project()
    core = [n for n in _names(project["dependencies"]) if n.startswith("faiss")]
    assert core == ["faiss-cpu"]
    for extra, requirements in project["optional-dependencies"].items():
        faiss = [n for n in _names(requirements) if n.startswith("faiss")]
        assert not faiss, f"extra {extra!r} installs {faiss} beside faiss-cpu"


def test_gpu_install_steps_are_documented():
    readme = (ROOT / "README.md").read_text()
    assert _faiss.GPU_FAISS_INSTALL.split(" && ")[0] in readme
    assert "pip install faiss-gpu" in readme
    assert 'skpatch[gpu]' not in readme


def test_image_folder_without_pillow_names_it(tmp_path, monkeypatch):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / label / "a.png")
    # an environment without Pillow: importing PIL raises ImportError
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        load_image_folder(tmp_path)


def _stub_faiss(**attributes):
    real = _faiss.import_faiss()
    return types.SimpleNamespace(IndexFlatL2=real.IndexFlatL2, **attributes)


def test_gpu_indexes_without_gpu_faiss_name_the_install_step(monkeypatch):
    atoms = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    stub = _stub_faiss()  # a CPU build: no GPU resources
    monkeypatch.setattr(_faiss, "import_faiss", lambda: stub)
    with pytest.raises(ImportError, match="pip uninstall -y faiss-cpu && pip install faiss-gpu"):
        _faiss.build_index(atoms, use_gpu=True, all_gpus=True)
    # one device: the index stays on the CPU and works
    index = _faiss.build_index(atoms, use_gpu=True)
    assert _faiss.index_search(index, atoms, 1)[1][:, 0].tolist() == list(range(8))


def test_gpu_faiss_that_sees_no_gpu_says_so(monkeypatch):
    atoms = np.zeros((2, 3), dtype=np.float32)
    stub = _stub_faiss(StandardGpuResources=object, get_num_gpus=lambda: 0)
    monkeypatch.setattr(_faiss, "import_faiss", lambda: stub)
    with pytest.raises(ValueError, match="sees none"):
        _faiss.build_index(atoms, use_gpu=True, all_gpus=True)
