"""What produced a result: package versions, git commit, device, machine."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

PACKAGES = ("oodbench", "torch", "numpy", "pandas", "scipy", "scikit-learn", "matminer", "pymatgen",
            "pluggy", "fairchem-core", "torch-geometric", "umap-learn", "lightgbm", "xgboost",
            "torch-scatter", "torch-sparse", "e3nn")  # fairchem backbones: no torch-scatter = the stand-in


@functools.lru_cache(maxsize=1)
def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> dict:
    """oodbench's own checkout, as :func:`git_state` describes it.

    Cached per process and first called when a run starts, so it describes the code that was imported,
    even if the checkout changes while a long sweep is running.
    """
    return git_state(Path(__file__).resolve().parent.parent)


def git_state(root: Path) -> dict:
    """The commit of the checkout at ``root``; if it has uncommitted changes, which tracked files and a hash
    of the diff (so two runs from the same dirty tree can be told apart from runs from another)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10).stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no")
        diff = git("diff", "HEAD") if status.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if not commit:
        return {"commit": None, "dirty": None}
    files = sorted(line[3:] for line in status.splitlines() if line.strip())
    out = {"commit": commit, "dirty": bool(files)}
    if files:
        out["dirty_files"] = files
        out["diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()[:16]
    return out


def resolve_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device "
                           f"(torch {torch.__version__}); use --device cpu or auto")
    if spec not in ("cpu",) and not spec.startswith("cuda"):
        raise ValueError(f"unknown device {spec!r}; use auto, cpu or cuda[:N]")
    return torch.device(spec)


def device_info(device: torch.device) -> dict:
    info = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
        info["cpu_count"] = os.cpu_count()
    return info


def environment(device: torch.device) -> dict:
    return {"packages": package_versions(), "git": git_commit(), "python": platform.python_version(),
            "platform": platform.platform(), "device": device_info(device)}
