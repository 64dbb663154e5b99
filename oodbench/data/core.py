"""Dataset objects, the data-home setting and the cache folder."""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

DATA_ENV = "OODBENCH_DATA"
CACHE_ENV = "OODBENCH_CACHE"
_DATA_HOME_OVERRIDE: Optional[Path] = None


class DataNotFoundError(FileNotFoundError):
    """A dataset file is missing; the message says which file and where to put it."""


def set_data_home(path) -> None:
    """Override the data home for this process (the CLI's ``--data-home``)."""
    global _DATA_HOME_OVERRIDE
    _DATA_HOME_OVERRIDE = Path(path).expanduser().resolve() if path else None


def data_home() -> Path:
    """``--data-home`` > ``$OODBENCH_DATA`` > ``~/.oodbench/data`` (where matminer downloads)."""
    if _DATA_HOME_OVERRIDE is not None:
        return _DATA_HOME_OVERRIDE
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser().resolve() if env else Path.home() / ".oodbench" / "data"


def cache_dir(*parts: str) -> Path:
    """``$OODBENCH_CACHE`` or ``~/.cache/oodbench``, with sub-folders created."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "oodbench").expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, mtime: float, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path) -> str:
    st = os.stat(path)
    return _sha256_cached(str(path), st.st_mtime, st.st_size)


@dataclass
class Dataset:
    """One loaded dataset: a row per material.

    ``table`` has at least ``id`` and ``formula`` plus the raw target columns;
    ``structures`` loads the pymatgen structures on first use (composition
    models never pay for decoding them). ``source`` records which file was read.
    """

    name: str
    table: pd.DataFrame
    source: dict
    _structures: Optional[Callable[[], list]] = field(default=None, repr=False)
    _loaded_structures: Optional[list] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> np.ndarray:
        return self.table["id"].to_numpy()

    @property
    def formulas(self) -> list[str]:
        return self.table["formula"].tolist()

    @property
    def has_structures(self) -> bool:
        return self._structures is not None

    @property
    def structures(self) -> list:
        if self._structures is None:
            raise ValueError(f"dataset {self.name!r} has compositions only, no crystal structures; "
                             f"use a composition backbone such as irnet")
        if self._loaded_structures is None:
            self._loaded_structures = self._structures()
        return self._loaded_structures

    def content_key(self) -> str:
        """A key that changes when the rows change: for content-keyed caches."""
        return self.source.get("sha256", "")[:16] + f"-{len(self)}"


@dataclass
class DatasetSpec:
    """A registered dataset: a name, a loader ``load(home) -> Dataset`` and a description."""

    name: str
    load: Callable[[Path], Dataset]
    description: str = ""
    has_structures: bool = False


_LOADED: dict = {}


def load_dataset(name: str) -> Dataset:
    """Load a registered dataset from the data home (memoised per process)."""
    from ..plugins import registries
    home = data_home()
    key = (name, str(home))
    if key not in _LOADED:
        _LOADED[key] = registries().datasets.get(name).load(home)
    return _LOADED[key]
