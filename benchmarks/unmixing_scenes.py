r"""Unmixing on whole scenes, run exactly as a user would: own_scene + predict.

  python benchmarks/unmixing_scenes.py --dir /tmp/unmix [--scenes mixture5,samson]
      [--override lsmm.init=vca ...]

For each scene: `python -m kgmae_jax.main --config configs/own_scene.py`
(defaults, M = the scene's number of materials), then `python -m
kgmae_jax.predict` (abundance GeoTIFF + endmember CSV), then scores against the
reference and prints one table row per method:
  mixture5  128 x 256 px, the 218 EnMAP bands: five library spectra (soil,
            vegetation, npv, impervious, water; one per class from
            `spectra.material_pools`, seed 7) mixed by smooth random
            abundance fields (softmax of 3 x Gaussian-filtered noise, sigma 8
            px), plus noise at SNR 100. Known abundances and endmembers.
  samson    ../shared/data/samson (95 x 95 px, 156 bands, 3 materials): no
            reference abundances; endmembers scored against its library
            (per material the closest library spectrum).
Rows: the model (LSMM head abundances, learned endmembers), blind VCA + FCLS
(mean over 3 seeds) and, where the truth is known, FCLS with the true
endmembers. SAD in radians (Hungarian matching), abundance RMSE over pixels.
"""

import argparse
import csv
import os
import pathlib
import subprocess
import sys

import numpy as np
from scipy import ndimage

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kgmae_jax import enmap  # pylint: disable=g-import-not-at-top,wrong-import-position
from kgmae_jax import spectra  # pylint: disable=g-import-not-at-top,wrong-import-position
from kgmae_jax import unmixing  # pylint: disable=g-import-not-at-top,wrong-import-position

SAMSON = ROOT.parent / "shared" / "data" / "samson"


def mixture5(out):
  """Writes cube.npy, wavelengths.txt; returns (cube, abundances, endmembers)."""
  rng = np.random.default_rng(7)
  pools = spectra.material_pools(enmap.WAVELENGTHS_NM, enmap.FWHM_NM)
  names = ("soil", "vegetation", "npv", "impervious", "water")
  em = np.stack([pools[n].spectra[rng.integers(len(pools[n].spectra))]
                 for n in names])
  fields = np.stack([ndimage.gaussian_filter(rng.standard_normal((128, 256)), 8)
                     for _ in names], -1)
  a = np.exp(3.0 * fields / fields.std())
  a /= a.sum(-1, keepdims=True)
  cube = a @ em
  cube += rng.standard_normal(cube.shape) * cube.mean() / 100.0
  np.save(out / "cube.npy", cube.astype(np.float32))
  np.savetxt(out / "wavelengths.txt", enmap.WAVELENGTHS_NM)
  return cube, a, em


def _sad(learned, ref_sets):
  """Mean matched angle: ref_sets is a list, per material, of (k, B) spectra."""
  cost = np.array([[unmixing.spectral_angle_matrix(ref, e[None]).min()
                    for ref in ref_sets] for e in learned])
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  rows, cols = optimize.linear_sum_assignment(cost)
  return cost[rows, cols].mean(), rows, cols


def _rmse(pred, true, rows, cols):
  p = pred.reshape(-1, pred.shape[-1])[:, rows]
  t = true.reshape(-1, true.shape[-1])[:, cols]
  return float(np.sqrt(np.mean((p - t) ** 2)))


def run_model(scene_dir, m, workdir, overrides):
  cube = scene_dir / "cube.npy"
  wl = scene_dir / "wavelengths.txt"
  cmd = [sys.executable, "-m", "kgmae_jax.main", "--config",
         str(ROOT / "configs/own_scene.py"), f"--config.data.scene={cube}",
         f"--config.data.wavelengths_file={wl}",
         f"--config.lsmm.num_endmembers={m}", f"--workdir={workdir}"]
  cmd += [f"--config.{o}" for o in overrides]
  subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  out = workdir / "abundances.tif"
  subprocess.run([sys.executable, "-m", "kgmae_jax.predict", "--workdir",
                  str(workdir), "--input", str(cube), "--wavelengths", str(wl),
                  "--output", str(out)], check=True, cwd=ROOT,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  import rasterio  # pylint: disable=g-import-not-at-top
  with rasterio.open(out) as f:
    abund = np.moveaxis(f.read(), 0, -1)
  rows = list(csv.reader(open(workdir / "abundances_endmembers.csv")))
  em = np.array([[float(v) for v in r[1:]] for r in rows[1:]]).T  # (M, B)
  return abund, em


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--dir", type=pathlib.Path, required=True)
  ap.add_argument("--scenes", default="mixture5,samson")
  ap.add_argument("--override", nargs="*", default=[],
                  help="config fields, e.g. lsmm.init=vca")
  args = ap.parse_args()
  os.environ.setdefault("KGMAE_DATA_DIR", str(args.dir / "data"))
  print("| scene | method | mean SAD (rad) | abundance RMSE | endmember range |")
  print("|---|---|---|---|---|")
  for name in args.scenes.split(","):
    d = args.dir / name
    d.mkdir(parents=True, exist_ok=True)
    if name == "mixture5":
      cube, truth, em_true = mixture5(d)
      refs = [e[None] for e in em_true]
    elif name == "samson":
      cube = np.load(SAMSON / "cube.npy")
      np.save(d / "cube.npy", cube)
      np.savetxt(d / "wavelengths.txt", np.loadtxt(SAMSON / "wavelengths.txt"))
      lib = np.load(SAMSON / "library.npz")
      refs = [lib[k].astype(np.float64) for k in sorted(lib.files)]
      truth = None
    else:
      raise ValueError(f"unknown scene {name!r}")
    m = len(refs)
    abund, em = run_model(d, m, d / "run", args.override)
    rows = []
    sad, r, c = _sad(em, refs)
    rows.append(("KARMA (own_scene defaults)", sad,
                 _rmse(abund, truth, r, c) if truth is not None else None,
                 (em.min(), em.max())))
    pix = cube.reshape(-1, cube.shape[-1]).astype(np.float64)
    vs, vr = [], []
    for seed in range(3):
      rng = np.random.default_rng(seed)
      sample = pix[rng.choice(len(pix), min(len(pix), 4096), replace=False)]
      v, _ = unmixing.vca(sample, m, seed=seed)
      s, r, c = _sad(v, refs)
      vs.append(s)
      if truth is not None:
        vr.append(_rmse(unmixing.fcls(pix, v), truth, r, c))
    rows.append(("VCA + FCLS (3 seeds)", np.mean(vs),
                 np.mean(vr) if vr else None, None))
    if truth is not None:
      ident = np.arange(m)
      rows.append(("FCLS, true endmembers", 0.0,
                   _rmse(unmixing.fcls(pix, em_true), truth, ident, ident), None))
    for method, s, rm, rng_ in rows:
      rm = "–" if rm is None else f"{rm:.3f}"
      rng_ = "" if rng_ is None else f"[{rng_[0]:.3f}, {rng_[1]:.3f}]"
      print(f"| {name} | {method} | {s:.3f} | {rm} | {rng_} |", flush=True)


if __name__ == "__main__":
  main()
