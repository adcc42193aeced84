"""Sphinx configuration of the sklearn-nlica documentation.

Builds offline (no intersphinx): ``sphinx-build -W --keep-going -b html docs
docs/_build/html`` runs every example of the gallery. ``.ci/docs`` does that.
"""

import inspect
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))
sys.path.insert(0, str(DOCS / "sphinxext"))

import sklearn_nlica
import sklearn_nlica.datasets
import sklearn_nlica.integrators
import sklearn_nlica.metrics

project = "sklearn-nlica"
author = "the sklearn-nlica developers"
copyright = "the sklearn-nlica developers"
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

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "sphinxext",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.json",
    "auto_examples/*.codeobj.json",
]

# Every cross-reference to the package must resolve; references to other
# projects cannot (the build is offline, without intersphinx) and are plain
# text.
nitpicky = True
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(sklearn|torch|numpy|scipy|skorch|joblib|dask|distributed|"
        r"matplotlib|pandas|tqdm|collections|typing|abc)(\..*)?",
    ),
    # Builtins, and the informal types of numpydoc parameter lists.
    (r"py:.*", r"(int|float|str|bool|dict|list|tuple|callable|object|None)"),
]
# Docstring references that do not resolve yet, to be fixed in the package
# (private helpers cannot be linked; a bare class name needs its module).
# Delete an entry once its docstring is fixed: the build then keeps it fixed.
nitpick_ignore = [
    ("py:class", "NonlinearICAMLE"),  # integrators module docstring
    ("py:func", "sklearn_nlica._marginal.gaussian_log_integrand"),  # Adaptive
    ("py:func", "sklearn_nlica._marginal.log_marginal"),  # SparseGrid
]

# ---------------------------------------------------------------------------
# API reference: one page per public object (autosummary, docs/_templates)
# ---------------------------------------------------------------------------

autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_typehints = "none"
autodoc_member_order = "groupwise"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

# Members that scikit-learn's base classes add to every estimator. They are
# documented by scikit-learn (their docstrings refer to its glossary and user
# guide, which an offline build cannot link), so the class pages leave them
# out. ``fit_transform`` and ``get_feature_names_out`` are part of this
# package's contract and stay.
_FOREIGN_KEPT = {"fit_transform", "get_feature_names_out"}


def _defining_module(obj):
    for candidate in (obj, getattr(obj, "fget", None), getattr(obj, "__func__", None)):
        module = getattr(candidate, "__module__", None)
        if module:
            return module
    owner = getattr(obj, "__objclass__", None)
    return getattr(owner, "__module__", "") or ""


def skip_foreign_members(app, what, name, obj, skip, options):
    """Leave out members inherited from scikit-learn, tuple or object."""
    if what != "class" or name in _FOREIGN_KEPT:
        return None
    if name.startswith("set_") and name.endswith("_request"):
        return True  # scikit-learn's metadata-routing setters
    if type(obj).__name__ == "_tuplegetter":
        return True  # NamedTuple fields, listed in the class's Attributes
    module = _defining_module(obj)
    if module and not module.startswith("sklearn_nlica"):
        return True
    if not module and not inspect.isdatadescriptor(obj):
        return True  # builtin methods (tuple.count, tuple.index)
    return None


# Module-level constants document themselves with a ``#:`` comment. Until they
# do, autodoc would show the docstring of their type (``str(object='')``):
# replace it by these lines.
_CONSTANT_FALLBACK_DOCS = {
    "sklearn_nlica.integrators.DEFAULT_INTEGRATOR": (
        "Name of the integration rule of :class:`~sklearn_nlica.NonlinearICAMLE` "
        "by default (a key of :data:`INTEGRATORS`)."
    ),
    "sklearn_nlica.integrators.DEFAULT_N_NODES": (
        "Node budget per point of :class:`~sklearn_nlica.NonlinearICAMLE` by default."
    ),
    "sklearn_nlica.integrators.INTEGRATORS": (
        "The integrator classes by name: the names accepted by ``integrator=`` "
        "and :func:`get_integrator`."
    ),
}


def drop_type_docstrings(app, what, name, obj, options, lines):
    """A constant shows its own doc comment, never the docstring of its type."""
    if what not in ("data", "attribute") or not lines:
        return
    own = [line.strip() for line in lines if line.strip()]
    inherited = [
        line.strip()
        for line in inspect.cleandoc(type(obj).__doc__ or "").splitlines()
        if line.strip()
    ]
    if own == inherited:
        lines[:] = []
        if name in _CONSTANT_FALLBACK_DOCS:
            lines.append(_CONSTANT_FALLBACK_DOCS[name])


def check_api_coverage(app):
    """Warn when a public name of the package is missing from api.rst."""
    listed = set((DOCS / "api.rst").read_text().split())
    modules = {
        "sklearn_nlica": sklearn_nlica,
        "sklearn_nlica.datasets": sklearn_nlica.datasets,
        "sklearn_nlica.integrators": sklearn_nlica.integrators,
        "sklearn_nlica.metrics": sklearn_nlica.metrics,
    }
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    for module_name, module in modules.items():
        prefix = "" if module_name == "sklearn_nlica" else module_name.split(".")[-1]
        for name in module.__all__:
            if name not in listed and f"{prefix}.{name}" not in listed:
                logger.warning(
                    f"{module_name}.{name} is public (in __all__) but missing "
                    "from docs/api.rst",
                    type="nlica",
                    subtype="api",
                )


# ---------------------------------------------------------------------------
# The command line: ``nlica --help`` rendered at build time
# ---------------------------------------------------------------------------


def write_cli_help(app):
    from sklearn_nlica._cli import build_parser

    os.environ["COLUMNS"] = "88"  # argparse wraps to the terminal width
    os.environ.setdefault("NO_COLOR", "1")
    target = DOCS / "generated" / "nlica_help.txt"
    target.parent.mkdir(parents=True, exist_ok=True)
    text = build_parser().format_help()
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def setup(app):
    app.connect("builder-inited", write_cli_help)
    app.connect("builder-inited", check_api_coverage)
    app.connect("autodoc-skip-member", skip_foreign_members)
    app.connect("autodoc-process-docstring", drop_type_docstrings, priority=100)


# ---------------------------------------------------------------------------
# Gallery
# ---------------------------------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "gallery_order.ExampleOrder",
    "download_all_examples": False,
    "doc_module": ("sklearn_nlica",),
    "backreferences_dir": "generated/backreferences",
    "reference_url": {"sklearn_nlica": None},
    "min_reported_time": 1,
    "remove_config_comments": True,
    # The examples set one torch thread themselves; matplotlib is reset
    # between examples.
    "reset_modules": ("matplotlib",),
}

# ---------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------

html_theme = (
    "pydata_sphinx_theme"
    if os.environ.get("NLICA_DOCS_THEME", "1") == "1"
    else "alabaster"
)
html_title = "sklearn-nlica"
html_static_path = []
if html_theme == "pydata_sphinx_theme":
    html_theme_options = {
        "navigation_with_keys": False,
        "show_toc_level": 2,
        "secondary_sidebar_items": ["page-toc"],
    }
