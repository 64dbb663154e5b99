"""Generate the CAL paper's shift sets once, as frozen id files + task TOMLs (``pip install -e .[splits]``).

Li, Miklaucic & Hu (arXiv:2408.09297) evaluate on three kinds of held-out
set, all cut from one dataset:

* covariate: the 145 Magpie features, standardised, reduced to 2-D by UMAP;
  a Gaussian kernel density estimate on that map; the lowest-density
  ``COVARIATE_FRACTION`` of the rows (the periphery) is held out;
* prior: the highest (and, for the small sets, lowest) label fraction;
* relation (Materials Project only): the piezoelectric materials
  (matminer's piezoelectric_tensor set), matched by MP id, else by reduced formula.

Every held-out set is removed from the rest; of the remaining "core" rows a
seeded random 15 % is the in-distribution test set (``iid-test``) and 10 % of
the other 85 % is validation (``val``); the remainder is ``train``. Train and
validation are therefore shared by all tasks of one dataset, as in the CAL
code, where one model is trained and scored on every OOD set.

UMAP is not bit-reproducible across machines (numba, threads), so the sets
are generated here once and shipped as ids (``tasks/splits/<dataset>-cal.json.gz``);
the tasks read them through the ``frozen-ids`` split kind, which checks the
file's sha256. Re-running this script rewrites the files and the TOMLs; bump
``VERSION`` when the rule changes.

    python scripts/make_cal_splits.py [--only phonons,mp]
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

VERSION = 1
SEED = 2024
COVARIATE_FRACTION = 0.10   # the lowest-density tenth of the UMAP map
IID_FRACTION = 0.15
VAL_FRACTION = 0.10
ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "tasks"
PIEZO_FILE = Path("other") / "piezoelectric_tensor" / "piezoelectric_tensor.csv.gz"

# short name, dataset, label column, transform, description of the label, adaptation k
SMALL = [
    ("phonons", "matbench_phonons", "last phdos peak", "ln", "ln last phonon DOS peak (1/cm)"),
    ("refractive-index", "matbench_dielectric", "n", "ln", "ln refractive index"),
    ("shear-modulus", "matbench_log_gvrh", "log10(G_VRH)", "identity", "log10 shear modulus (GPa)"),
]
MP_LABELS = [("eform", "e_form", "formation energy (eV/atom)"), ("gap", "gap_pbe", "PBE band gap (eV)")]


def covariate_periphery(X: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, dict]:
    """Rows of the ``fraction`` lowest kernel density on the 2-D UMAP map of the standardised features."""
    import umap
    from sklearn.neighbors import KernelDensity
    Xs = (X - X.mean(0)) / np.where(X.std(0) > 1e-8, X.std(0), 1.0)
    emb = umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, random_state=seed).fit_transform(Xs)
    emb = (emb - emb.mean(0)) / emb.std(0)
    # Scott's rule for 2-D data: n^(-1/6) on the standardised map
    bw = len(emb) ** (-1.0 / 6.0)
    log_density = KernelDensity(bandwidth=bw).fit(emb).score_samples(emb)
    k = int(round(fraction * len(X)))
    rows = np.sort(np.argsort(log_density, kind="stable")[:k])
    return rows, {"umap": {"n_components": 2, "n_neighbors": 15, "min_dist": 0.1, "random_state": seed,
                           "version": umap.__version__},
                  "kde": {"kernel": "gaussian", "bandwidth": bw, "on": "standardised UMAP map"},
                  "fraction": fraction, "log_density_cut": float(np.sort(log_density)[k - 1])}


def label_tail(y: np.ndarray, fraction: float, side: str) -> np.ndarray:
    """The ``fraction`` most extreme labels on ``side``; ties with the cut value are held out too."""
    k = int(round(fraction * len(y)))
    if side == "top":
        cut = np.sort(y)[::-1][k - 1]
        return np.flatnonzero(y >= cut)
    cut = np.sort(y)[k - 1]
    return np.flatnonzero(y <= cut)


def piezo_rows(ds, home: Path) -> tuple[np.ndarray, dict]:
    from pymatgen.core import Composition
    pz = pd.read_csv(home / PIEZO_FILE, index_col=0, usecols=[0, 1, 2], keep_default_na=False, na_values=[""])
    ids = ds.table["id"].astype(str)
    by_id = ids.isin(set(pz["material_id"].astype(str)))
    rest = pz[~pz["material_id"].isin(set(ids))]
    red = {Composition(f).reduced_formula for f in rest["formula"]}
    reduced = ds.table["formula"].map(lambda f: Composition(f).reduced_formula)
    by_formula = reduced.isin(red) & ~by_id
    rows = np.flatnonzero(by_id.to_numpy() | by_formula.to_numpy())
    return rows, {"piezo_entries": len(pz), "matched_by_id": int(by_id.sum()),
                  "matched_by_reduced_formula": int(by_formula.sum())}


def core_split(n: int, held: np.ndarray, seed: int) -> dict:
    mask = np.ones(n, bool)
    mask[held] = False
    core = np.random.default_rng(seed).permutation(np.flatnonzero(mask))
    n_iid = int(round(IID_FRACTION * len(core)))
    rest = core[n_iid:]
    n_val = int(round(VAL_FRACTION * len(rest)))
    return {"iid-test": np.sort(core[:n_iid]), "val": np.sort(rest[:n_val]), "train": np.sort(rest[n_val:])}


def write_groups(name: str, ds, groups: dict, info: dict) -> tuple[str, str]:
    ids = ds.ids.astype(str)
    payload = {"format": "oodbench-id-groups/1", "dataset": ds.name, "version": VERSION,
               "generator": "scripts/make_cal_splits.py", "rows": len(ids), "info": info,
               "groups": {g: [ids[i] for i in rows] for g, rows in groups.items()}}
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as f:   # mtime=0: same bytes each run
        f.write(raw)
    rel = f"splits/{name}-cal.json.gz"
    (TASK_DIR / "splits").mkdir(exist_ok=True)
    (TASK_DIR / rel).write_bytes(buf.getvalue())
    return rel, hashlib.sha256(buf.getvalue()).hexdigest()


def write_task(task: str, dataset: str, label: str, transform: str, description: str, rel: str, sha: str,
               test_group: str, tags: list, meta: dict, side: str | None = None) -> None:
    lines = ["# CAL paper shift set (Li, Miklaucic & Hu 2024); generated by scripts/make_cal_splits.py, do not edit.",
             f'name = "{task}"', f"version = {VERSION}", f'dataset = "{dataset}"', f'label = "{label}"',
             f'transform = "{transform}"', f'description = "{description}"',
             "tags = [" + ", ".join(f'"{t}"' for t in tags) + "]", "", "[split]", 'kind = "frozen-ids"',
             f'file = "{rel}"', f'sha256 = "{sha}"', 'train = "train"', 'val = "val"', f'test = "{test_group}"']
    if side:
        lines.append(f'side = "{side}"')
    lines += ["", "[meta]"] + [f"{k} = {json.dumps(v)}" for k, v in meta.items()]
    (TASK_DIR / f"{task}.toml").write_text("\n".join(lines) + "\n")


def features(ds) -> np.ndarray:
    from oodbench.runner import featurize
    from oodbench_plugins.backbones.irnet import IRNet
    return featurize(IRNet(), ds).tensor.numpy().astype(np.float64)


def percent(rows, n) -> float:
    return round(100.0 * len(rows) / n, 2)


def make_small(short: str, dataset: str, label: str, transform: str, what: str) -> None:
    from oodbench.data import load_dataset
    from oodbench.tasks import TRANSFORMS
    ds = load_dataset(dataset)
    y = TRANSFORMS[transform](ds.table[label].to_numpy(dtype=np.float64))
    n = len(ds)
    cov, cov_info = covariate_periphery(features(ds), COVARIATE_FRACTION, SEED)
    top, bottom = label_tail(y, 0.10, "top"), label_tail(y, 0.10, "bottom")
    held = {"covariate": cov, "prior-max": top, "prior-min": bottom}
    groups = {**held, **core_split(n, np.concatenate(list(held.values())), SEED)}
    rel, sha = write_groups(short, ds, groups, {"covariate": cov_info, "seed": SEED})
    common = dict(dataset=dataset, label=label, transform=transform, rel=rel, sha=sha)
    k = 64
    write_task(f"{short}-cal-covariate", description=f"{what}; test = lowest-density {percent(cov, n)} % of the "
               f"UMAP map of the Magpie features", test_group="covariate", tags=["cal", "covariate-shift"],
               meta={"adapt_k": k, "heldout_percent": percent(cov, n)}, **common)
    write_task(f"{short}-cal-prior-max", description=f"{what}; test = highest {percent(top, n)} % of labels",
               test_group="prior-max", tags=["cal", "prior-shift"], side="top",
               meta={"adapt_k": k, "heldout_percent": percent(top, n)}, **common)
    write_task(f"{short}-cal-prior-min", description=f"{what}; test = lowest {percent(bottom, n)} % of labels",
               test_group="prior-min", tags=["cal", "prior-shift"], side="bottom",
               meta={"adapt_k": k, "heldout_percent": percent(bottom, n)}, **common)
    write_task(f"{short}-cal-iid", description=f"{what}; test = random {IID_FRACTION:.0%} of the rows outside "
               f"every CAL held-out set", test_group="iid-test", tags=["cal", "iid"],
               meta={"heldout_percent": percent(groups["iid-test"], n)}, **common)
    print(f"{short}: n={n} " + ", ".join(f"{g}={len(r)}" for g, r in groups.items()), flush=True)


def make_mp() -> None:
    from oodbench.data import data_home, load_dataset
    ds = load_dataset("mp_2019")
    n = len(ds)
    t0 = time.perf_counter()
    cov, cov_info = covariate_periphery(features(ds), COVARIATE_FRACTION, SEED)
    print(f"mp umap+kde {time.perf_counter() - t0:.0f} s", flush=True)
    held = {"covariate": cov}
    for short, col, _ in MP_LABELS:
        held[f"prior-{short}"] = label_tail(ds.table[col].to_numpy(dtype=np.float64), 0.20, "top")
    rel_rows, rel_info = piezo_rows(ds, data_home())
    held["relation"] = rel_rows
    groups = {**held, **core_split(n, np.concatenate(list(held.values())), SEED)}
    rel, sha = write_groups("mp_2019", ds, groups, {"covariate": cov_info, "relation": rel_info, "seed": SEED})
    for short, col, what in MP_LABELS:
        common = dict(dataset="mp_2019", label=col, transform="identity", rel=rel, sha=sha)
        write_task(f"mp-{short}-covariate", description=f"MP 2019 {what}; test = lowest-density "
                   f"{percent(cov, n)} % of the UMAP map of the Magpie features", test_group="covariate",
                   tags=["cal", "covariate-shift"], meta={"adapt_k": 1024, "heldout_percent": percent(cov, n)},
                   **common)
        prior = held[f"prior-{short}"]
        write_task(f"mp-{short}-prior", description=f"MP 2019 {what}; test = highest {percent(prior, n)} % of "
                   f"{col}", test_group=f"prior-{short}", tags=["cal", "prior-shift"], side="top",
                   meta={"adapt_k": 1024, "heldout_percent": percent(prior, n)}, **common)
        write_task(f"mp-{short}-relation", description=f"MP 2019 {what}; test = piezoelectric materials "
                   f"(matched by MP id, else reduced formula)", test_group="relation",
                   tags=["cal", "relation-shift"], meta={"adapt_k": 256, "heldout_percent": percent(rel_rows, n)},
                   **common)
        write_task(f"mp-{short}-iid", description=f"MP 2019 {what}; test = random {IID_FRACTION:.0%} of the rows "
                   f"outside every CAL held-out set", test_group="iid-test", tags=["cal", "iid"],
                   meta={"heldout_percent": percent(groups["iid-test"], n)}, **common)
    print(f"mp_2019: n={n} " + ", ".join(f"{g}={len(r)}" for g, r in groups.items()) + f" {rel_info}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="phonons,refractive-index,shear-modulus,mp",
                    help="comma list of: phonons, refractive-index, shear-modulus, mp")
    args = ap.parse_args(argv)
    if not os.environ.get("OODBENCH_DATA"):
        print("set OODBENCH_DATA to the data folder (shared/data)", file=sys.stderr)
        return 2
    wanted = set(args.only.split(","))
    for short, dataset, label, transform, what in SMALL:
        if short in wanted:
            make_small(short, dataset, label, transform, what)
    if "mp" in wanted:
        make_mp()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
