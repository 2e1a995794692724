"""Sphinx configuration of the radkd-d2 documentation (``make docs``; tested by tests/test_docs.py).

The site is built with warnings as errors (``-W --keep-going -n``): a broken cross-reference, a
page outside every toctree or a docstring that does not parse fails the build. The API reference
imports the installed packages as they are (nothing is mocked), and the config reference is
generated from the keys ``add_radkd_config`` declares (``_ext/radkd_config_ref.py``).
"""
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # this checkout's radkd_d2, not another one installed in editable mode
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

project = "radkd-d2"
author = "radkd-d2 contributors"
copyright = "radkd-d2 contributors"
release = version = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "radkd_config_ref",
    "radkd_api_refs",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]
templates_path = ["_templates"]

# MyST: $...$ / $$...$$ math, ::: fences, definition lists; heading anchors for #links
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# API reference: one page per module, from the docstrings (Google style, as Detectron2's)
autosummary_generate = True
autosummary_imported_members = False
# each object on the page of the module that defines it (a package's __all__ re-exports are
# not documented twice); undocumented public members listed too, so references to them resolve
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "show-inheritance": True,
    "ignore-module-all": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # an override without a docstring does not show its base's
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields: a dataclass field is described once

# nitpicky: every cross-reference to radkd_d2 must resolve; names of other libraries cannot
# (there is no network for intersphinx inventories), so they are listed here as known outside
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|torchvision|detectron2|fvcore|iopath|numpy|np|PIL|onnx|onnxruntime|timm|cv2|matplotlib|pycocotools|yacs|argparse|logging|pathlib|collections|concurrent|contextlib|dataclasses|enum|subprocess|typing|typing_extensions|os|io|re|json|types|abc|threading|multiprocessing|functools|numbers|datetime)(\..*)?"),
    (r"py:.*", r"(Tensor|CfgNode|CN|Path|Module|nn\.Module|Instances|Boxes|ShapeSpec|Registry|Backbone|EventStorage|DatasetEvaluator|Metadata|Namespace|ndarray)"),
    # Detectron2's GeneralizedRCNN.forward docstring, mirrored in radkd_d2/modeling/meta_arch,
    # cites a method Detectron2 has no longer (its _postprocess)
    ("py:meth", r"postprocess"),
    (r"py:.*", r"(int|float|str|bool|bytes|dict|list|tuple|set|object|callable|type|None|Any|Optional|Union|Sequence|Mapping|Iterable|Iterator|Callable|Dict|List|Tuple|Set|iterable|optional)"),
]

html_theme = "furo"
html_title = "radkd-d2"
html_static_path = []
html_show_sourcelink = False
