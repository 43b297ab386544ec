"""Sphinx configuration for skpatch.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
Set ``SKPATCH_DOCS_NO_GALLERY=1`` to render the gallery without running it.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import skpatch  # noqa: E402

project = "skpatch"
author = "The skpatch developers"
copyright = "2026, The skpatch developers"
release = skpatch.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "sg_execution_times.rst"]

autosummary_generate = True
autodoc_default_options = {"members": True}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "sklearn": ("https://scikit-learn.org/stable/", None),
    "torch": ("https://pytorch.org/docs/stable/", None),
}
intersphinx_timeout = 5


def _online(host="scikit-learn.org"):
    import socket

    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


# Offline builds (CI, air-gapped machines) keep cross-references as plain
# text instead of failing a -W build on unreachable inventories.
if os.environ.get("SKPATCH_DOCS_OFFLINE") or not _online():
    print("skpatch docs: offline, intersphinx links disabled")
    intersphinx_mapping = {}

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"quickstart\.py",
    "plot_gallery": "False" if os.environ.get("SKPATCH_DOCS_NO_GALLERY") else "True",
    "download_all_examples": False,
    "within_subsection_order": "FileNameSortKey",
}

html_theme = "alabaster"
html_static_path = []
