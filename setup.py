"""radkd-d2: angular knowledge distillation with raw features, on Detectron2.

torch, torchvision and Detectron2 are installed by ``tools/setup_env.sh`` (Detectron2 is not on
the package registry; the script repacks a pure-Python wheel), so they are not listed here.
"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
REQUIREMENTS = [
    line.split("#")[0].strip()
    for line in (ROOT / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip() and not line.startswith("pytest")
]
DOCS = ROOT / "requirements-docs.txt"  # the site's (make docs); an extra, not a runtime need
DOCS_REQUIREMENTS = [
    line.split("#")[0].strip()
    for line in (DOCS.read_text().splitlines() if DOCS.exists() else [])
    if line.split("#")[0].strip()
]

setup(
    name="radkd-d2",
    version="0.1.0",
    description="Knowledge distillation with raw features (angular distillation) on Detectron2",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["radkd_d2", "radkd_d2.*"]),
    install_requires=REQUIREMENTS,
    extras_require={"docs": DOCS_REQUIREMENTS},
    entry_points={"console_scripts": ["radkd-train-net = radkd_d2.train_net:cli"]},
)
