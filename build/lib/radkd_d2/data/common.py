"""Helpers shared by the dataset registrations."""
from __future__ import annotations

import os
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog


def datasets_root(cfg_root: str = "") -> Path:
    """Dataset root: the ``DATASETS.ROOT`` config value, else ``$DETECTRON2_DATASETS``, else
    ``./datasets`` (Detectron2's convention)."""
    return Path(cfg_root or os.environ.get("DETECTRON2_DATASETS", "datasets")).expanduser()


def register(name: str, loader, **metadata) -> None:
    """(Re-)register ``name`` in DatasetCatalog/MetadataCatalog; re-registration replaces it, so a
    config may point a name at another root."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def require_folder(path: Path, what: str, fix: str) -> None:
    """Raise FileNotFoundError naming ``path`` and how to fix it when it is missing or empty."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: folder {path} does not exist. {fix}")
    if not any(path.iterdir()):
        raise FileNotFoundError(f"{what}: folder {path} is empty. {fix}")
