"""What produced a result: package versions, git commit, device, machine."""
from __future__ import annotations

import functools
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
    root = Path(__file__).resolve().parent.parent
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


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
