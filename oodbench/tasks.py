"""Tasks: a dataset, a label and a split rule, with a version every result records.

Tasks are small declarative TOML files (see ``tasks/*.toml``)::

    name = "phonons-top"
    version = 1
    dataset = "matbench_phonons"
    label = "last phdos peak"
    transform = "ln"
    [split]
    kind = "label-extrapolation"
    side = "top"

Families (``oodbench_task_families``) create member tasks on demand from a
name such as ``mp-eform-loo-element:O``.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import splits as split_rules
from .data import Dataset, load_dataset
from .registry import UnknownNameError

TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda y: y,
    "ln": np.log,
    "log10": np.log10,
}


def read_split_file(path: Path, sha256: Optional[str]) -> dict:
    """A frozen split file (JSON, optionally gzipped) after checking its sha256 against the task's."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"split file {path} is missing; it ships with the task files (tasks/splits/)")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if not sha256:
        raise ValueError(f"a frozen-ids split must give the sha256 of {path.name} (it is {digest})")
    if digest != sha256:
        raise ValueError(f"split file {path} has sha256 {digest}, but its task expects {sha256}: the file was "
                         f"changed; restore it, or regenerate it and update the task's sha256 and version")
    return json.loads(gzip.decompress(raw) if path.name.endswith(".gz") else raw)


def _frozen_ids(params: dict, base: Optional[Path]) -> Callable:
    missing = [k for k in ("file", "sha256", "train", "val", "test") if k not in params]
    if missing:
        raise ValueError(f"a frozen-ids split needs {', '.join(missing)} (file, sha256 and the train/val/test "
                         f"group names)")
    path = Path(params["file"])
    if not path.is_absolute():
        if base is None:
            raise ValueError(f"frozen-ids split file {path} is relative but the task has no folder to resolve it")
        path = base / path
    cache: dict = {}

    def make(ds, y):
        if "groups" not in cache:
            cache["groups"] = read_split_file(path, params["sha256"])["groups"]
        return split_rules.from_id_groups(ds.ids, cache["groups"], params["train"], params["val"], params["test"],
                                          y=y, side=params.get("side"), source=f"split file {path.name}")
    return make


def _split_from_params(params: dict, base: Optional[Path] = None) -> Callable:
    params = dict(params)
    kind = params.pop("kind")
    if kind == "label-extrapolation":
        return lambda ds, y: split_rules.label_extrapolation(y, ds.ids, **params)
    if kind == "random":
        return lambda ds, y: split_rules.random_split(len(y), ds.ids, **params)
    if kind == "frozen-ids":
        return _frozen_ids(params, base)
    raise ValueError(f"unknown split kind {kind!r}; known: label-extrapolation, random, frozen-ids "
                     f"(or give the task a `make_split` callable in a plugin)")


@dataclass
class TaskData:
    spec: "TaskSpec"
    dataset: Dataset
    y: np.ndarray          # transformed labels of every row
    split: "split_rules.Split"


@dataclass
class TaskSpec:
    name: str
    version: int
    dataset: str
    label: str
    transform: str = "identity"
    description: str = ""
    split: dict = field(default_factory=dict)          # declarative rule, recorded in results
    make_split: Optional[Callable] = field(default=None, repr=False)  # (Dataset, y) -> Split
    family: Optional[str] = None
    tags: tuple = ()
    meta: dict = field(default_factory=dict)           # e.g. default adaptation k, diagnostics
    row_filter: Optional[Callable] = field(default=None, repr=False)  # (Dataset) -> bool mask of usable rows

    def labels(self, dataset: Dataset) -> np.ndarray:
        if self.label not in dataset.table.columns:
            raise KeyError(f"task {self.name!r}: dataset {dataset.name!r} has no column {self.label!r} "
                           f"(columns: {', '.join(dataset.table.columns)})")
        return TRANSFORMS[self.transform](dataset.table[self.label].to_numpy(dtype=np.float64))

    def load(self) -> TaskData:
        ds = load_dataset(self.dataset)
        if self.row_filter is not None:
            mask = np.asarray(self.row_filter(ds), dtype=bool)
            ds = Dataset(ds.name, ds.table[mask].reset_index(drop=True),
                         dict(ds.source, row_filter=self.split.get("row_filter", "plugin")),
                         _structures=(lambda d=ds, m=mask: [s for s, k in zip(d.structures, m) if k])
                         if ds.has_structures else None)
        y = self.labels(ds)
        make = self.make_split or _split_from_params(self.split)
        split = make(ds, y)
        return TaskData(self, ds, y, split)

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "dataset": self.dataset, "label": self.label,
                "transform": self.transform, "split": self.split, "family": self.family}


@dataclass
class TaskFamily:
    """Expands to member tasks named ``<name>:<member>``; ``members()`` lists the valid ones."""

    name: str
    description: str
    members: Callable[[], list]                 # -> list of member keys (strings)
    make: Callable[[str], TaskSpec]             # member key -> TaskSpec
    tags: tuple = ()


def load_task_file(path: Path) -> TaskSpec:
    with open(path, "rb") as f:
        d = tomllib.load(f)
    missing = [k for k in ("name", "version", "dataset", "label", "split") if k not in d]
    if missing:
        raise ValueError(f"task file {path} lacks {', '.join(missing)}")
    if d.get("transform", "identity") not in TRANSFORMS:
        raise ValueError(f"task file {path}: unknown transform {d['transform']!r}; known: {', '.join(TRANSFORMS)}")
    make = _split_from_params(d["split"], path.parent)  # fail at registration on an unknown split kind
    return TaskSpec(name=d["name"], version=int(d["version"]), dataset=d["dataset"], label=d["label"],
                    transform=d.get("transform", "identity"), description=d.get("description", ""),
                    split=d["split"], tags=tuple(d.get("tags", ())), meta=d.get("meta", {}),
                    make_split=make if d["split"].get("kind") == "frozen-ids" else None)


def load_task_dir(folder: Path) -> list[TaskSpec]:
    return [load_task_file(p) for p in sorted(Path(folder).glob("*.toml"))]


def get_task(name: str) -> TaskSpec:
    """A registered task or a family member (``family:member``), with "did you mean" errors."""
    from .plugins import registries
    regs = registries()
    if name in regs.tasks:
        return regs.tasks.get(name)
    if ":" in name:
        fam_name, member = name.split(":", 1)
        fam = regs.families.get(fam_name)
        valid = fam.members()
        if member not in valid:
            import difflib
            close = difflib.get_close_matches(member, valid, n=5)
            raise UnknownNameError(f"family {fam_name!r} has no member {member!r}"
                           + (f"; did you mean {', '.join(close)}?" if close else "")
                           + f" Run `oodbench list tasks --family {fam_name}`.")
        return fam.make(member)
    return regs.tasks.get(name)


def expand_tasks(spec: str) -> list[str]:
    """``all``, comma lists, ``tag:NAME`` (e.g. ``tag:mex``) and ``family:*`` → task names."""
    from .plugins import registries
    regs = registries()
    out: list[str] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if part == "all":
            out += regs.tasks.names()
        elif part.startswith("tag:"):
            tagged = [n for n in regs.tasks.names() if part[4:] in regs.tasks.get(n).tags]
            if not tagged:
                known = sorted({t for n in regs.tasks.names() for t in regs.tasks.get(n).tags})
                raise ValueError(f"no task has tag {part[4:]!r}; tags: {', '.join(known)}")
            out += tagged
        elif part.endswith(":*"):
            fam = regs.families.get(part[:-2])
            out += [f"{fam.name}:{m}" for m in fam.members()]
        else:
            get_task(part)
            out.append(part)
    return list(dict.fromkeys(out))
