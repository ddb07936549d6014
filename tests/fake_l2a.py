"""A tiny fake EnMAP L2A product on disk, in DLR's file layout (enmap_l2a.py).

224-band int16 SPECTRAL_IMAGE.TIF (reflectance x 10^4 mixed from library
endmembers, fill -32768 in the 6 water-vapour bands and outside a footprint),
METADATA.XML with the nominal band centres, a pixel mask and a cloud layer.
"""

import pathlib
import zipfile

import numpy as np
import rasterio
from rasterio import transform as rio_transform

from kgmae_jax import enmap
from kgmae_jax import enmap_l2a
from kgmae_jax import unmixing

CRS = 'EPSG:32633'
TRANSFORM = rio_transform.from_origin(400000.0, 5800000.0, 30.0, 30.0)
NAME = 'ENMAP01-____L2A-DT0000001867_20220724T104526Z_008_V010302_20230628T165614Z'


def metadata_xml(gain=1e-4) -> str:
  bands = ''.join(
      f'<bandID number="{i + 1}"><wavelengthCenterOfBand>{w:.3f}'
      f'</wavelengthCenterOfBand><FWHMOfBand>{f:.2f}</FWHMOfBand>'
      f'<GainOfBand>{gain:g}</GainOfBand><OffsetOfBand>0</OffsetOfBand>'
      '</bandID>'
      for i, (w, f) in enumerate(zip(enmap.NOMINAL_WAVELENGTHS_NM,
                                     enmap.NOMINAL_FWHM_NM)))
  return (f'<?xml version="1.0" encoding="UTF-8"?><level_X><specific>'
          f'<code>L2A</code><bandCharacterisation>{bands}'
          '</bandCharacterisation></specific></level_X>')


def reflectance(height, width, seed=0, m=4):
  """(H, W, 218) float64 reflectance mixed from m library endmembers."""
  rng = np.random.default_rng(seed)
  em = unmixing.library_endmembers(enmap.WAVELENGTHS_NM, m).T  # (m, 218)
  coarse = rng.dirichlet(np.ones(m) * 0.5, (height // 4 + 1, width // 4 + 1))
  a = np.repeat(np.repeat(coarse, 4, 0), 4, 1)[:height, :width]
  return a @ em + rng.normal(0, 0.002, (height, width, em.shape[1]))


def write_product(root, height=40, width=40, *, seed=0, name=NAME,
                  as_zip=False, gain=1e-4, dn_scale=1e4, dropped_data=False,
                  cloud=True):
  """Writes a product folder (or .ZIP) under root; returns its path.

  Fill: the top-left triangle (col + row < height // 3) and the last 8 rows
  of the first 8 columns; cloud: a disk at the image centre; pixel mask: one
  pixel at (1, width - 2).
  """
  root = pathlib.Path(root)
  folder = root / name
  folder.mkdir(parents=True, exist_ok=True)
  prefix = folder / name
  refl = reflectance(height, width, seed)
  dn = np.full((height, width, 224), enmap_l2a.FILL, np.int16)
  dn[..., enmap.BAND_INDICES] = np.round(refl * dn_scale).clip(
      -32767, 32767).astype(np.int16)
  if dropped_data:
    dn[..., 133] = 100
  rr, cc = np.mgrid[:height, :width]
  dn[rr + cc < height // 3] = enmap_l2a.FILL
  dn[-8:, :8] = enmap_l2a.FILL
  profile = dict(driver='GTiff', height=height, width=width, crs=CRS,
                 transform=TRANSFORM)
  with rasterio.open(f'{prefix}-SPECTRAL_IMAGE.TIF', 'w', count=224,
                     dtype='int16', nodata=enmap_l2a.FILL, **profile) as f:
    f.write(np.moveaxis(dn, -1, 0))
  pixmask = np.zeros((height, width), np.uint8)
  pixmask[1, width - 2] = 1
  clouds = np.zeros((height, width), np.uint8)
  if cloud:
    clouds[np.hypot(rr - height / 2, cc - width / 2) < height / 8] = 1
  layers = {'QL_PIXELMASK': pixmask, 'QL_QUALITY_CLOUD': clouds}
  for layer in enmap_l2a.QUALITY_LAYERS[2:]:
    layers[layer] = np.zeros((height, width), np.uint8)
  for layer, arr in layers.items():
    with rasterio.open(f'{prefix}-{layer}.TIF', 'w', count=1, dtype='uint8',
                       **profile) as f:
      f.write(arr[None])
  (folder / f'{name}-METADATA.XML').write_text(metadata_xml(gain))
  if not as_zip:
    return folder
  zpath = root / f'{name}.ZIP'
  with zipfile.ZipFile(zpath, 'w') as z:
    for p in sorted(folder.iterdir()):
      z.write(p, f'{name}/{p.name}')
      p.unlink()
  folder.rmdir()
  return zpath


def expected_valid(height=40, width=40, cloud=True):
  """(H, W) bool: the pixels write_product leaves valid."""
  rr, cc = np.mgrid[:height, :width]
  valid = ~(rr + cc < height // 3)
  valid[-8:, :8] = False
  valid[1, width - 2] = False
  if cloud:
    valid &= ~(np.hypot(rr - height / 2, cc - width / 2) < height / 8)
  return valid
