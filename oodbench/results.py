"""The results store: one JSON record per run, written atomically, found by config hash.

Layout: ``<root>/<task>/<method>/<backbone>/seed<S>-<hash>.json`` where the
hash covers everything that defines the experiment (task + version + split,
method + hyperparameters, backbone + hyperparameters, seed, adaptation k) but
not where or when it ran. A sweep skips configs whose record exists, so a
killed sweep resumes where it stopped and never loses a finished run.
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Iterator

from .io import atomic_write_json

SCHEMA_VERSION = 1


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return name.replace("/", "_").replace(":", "=")


class ResultStore:
    def __init__(self, root):
        self.root = Path(root)

    def path_for(self, config: dict) -> Path:
        h = config_hash(config)
        adapt = f"-adapt{config['adapt_k']}" if config.get("adapt_k") else ""
        return (self.root / _safe(config["task"]) / _safe(config["method"]) / _safe(config["backbone"])
                / f"seed{config['seed']}{adapt}-{h}.json")

    def exists(self, config: dict) -> bool:
        return self.path_for(config).exists()

    def load(self, config: dict) -> dict:
        return json.loads(self.path_for(config).read_text())

    def write(self, record: dict) -> Path:
        return atomic_write_json(self.path_for(record["config"]), record)

    def __iter__(self) -> Iterator[dict]:
        # published raw records are gzipped (leaderboards/*/raw/*.json.gz); the live store is plain JSON
        for p in sorted([*self.root.rglob("*.json"), *self.root.rglob("*.json.gz")]):
            try:
                text = gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text()
                rec = json.loads(text)
            except (json.JSONDecodeError, OSError, EOFError):
                continue  # not ours, or written by something non-atomic
            if isinstance(rec, dict) and rec.get("schema_version") == SCHEMA_VERSION:
                rec["path"] = str(p)
                yield rec
