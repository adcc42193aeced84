"""Sphinx configuration of the sklearn-nlica documentation (builds offline)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import sklearn_nlica

project = "sklearn-nlica"
author = "the sklearn-nlica developers"
release = sklearn_nlica.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

autosummary_generate = True
numpydoc_show_class_members = False
# Only the package's own members: the inherited scikit-learn plumbing
# (get_params, set_output, ...) is documented by scikit-learn.
autodoc_default_options = {"members": True}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py"]

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "reference_url": {"sklearn_nlica": None},
}

html_theme = (
    "pydata_sphinx_theme"
    if os.environ.get("NLICA_DOCS_THEME", "1") == "1"
    else "alabaster"
)
html_title = "sklearn-nlica"
