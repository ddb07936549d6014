r"""EnMAP Level-2A products -> training tiles (TFDS, array_record, manual_dir).

A `scene.TiledScenes` builder (`dataset.DataSet`), one shard per tile row.

  python -m kgmae_jax.main --config configs/enmap_l2a.py \
      --config.data.manual_dir=/data/enmap_l2a --workdir runs/enmap

Products are found under `manual_dir` (recursively), as extracted folders or
as .ZIP files, by their `*-METADATA.XML`. What is assumed of a product (DLR's
L2A layout, e.g. `ENMAP01-____L2A-DT..._V010303_...Z-METADATA.XML`), with
`<prefix>` the metadata file name without `-METADATA.XML`:
  * `<prefix>-SPECTRAL_IMAGE.TIF`: 224 bands, int16, fill value -32768,
    reflectance = DN * GainOfBand + OffsetOfBand (normally reflectance x 10^4);
  * `<prefix>-METADATA.XML`: `level_X/specific/bandCharacterisation/bandID
    [@number]` with `wavelengthCenterOfBand` (nm), `FWHMOfBand`, `GainOfBand`,
    `OffsetOfBand`;
  * quality layers `<prefix>-QL_PIXELMASK.TIF`, `-QL_QUALITY_CLOUD.TIF`,
    `-QL_QUALITY_CLOUDSHADOW.TIF`, `-QL_QUALITY_HAZE.TIF`,
    `-QL_QUALITY_CIRRUS.TIF`, `-QL_QUALITY_SNOW.TIF` on the image grid; a
    pixel is masked where any band of any of them is non-zero (a missing layer
    is logged and not applied);
  * in a .ZIP, members may sit in sub-folders; they are read through GDAL's
    /vsizip/ without extracting.
Bands 133-135 and 164-166 (1-based, water vapour) are expected to be all fill
(a warning is logged otherwise) and are dropped: 218 bands in product order.
A pixel is valid where none of the 218 bands is fill and no quality layer
flags it. Reads are windowed, one tile at a time (all 224 bands of a tile
window, never the whole product). Tiling, splits and the valid-fraction rule
are `scene.py`'s; `config.data.reflectance_scale` > 0 replaces the gains
(offset 0), and a median reflectance above 1.5 stops the build naming it.
"""

import dataclasses
import functools
import os
import pathlib
import zipfile
from xml.etree import ElementTree

from absl import logging
import numpy as np
import rasterio

from kgmae_jax import enmap
from kgmae_jax import readers
from kgmae_jax import scene

FILL = -32768
NUM_PRODUCT_BANDS = 224
METADATA_SUFFIX = '-METADATA.XML'
SPECTRAL_SUFFIX = '-SPECTRAL_IMAGE.TIF'
QUALITY_LAYERS = ('QL_PIXELMASK', 'QL_QUALITY_CLOUD', 'QL_QUALITY_CLOUDSHADOW',
                  'QL_QUALITY_HAZE', 'QL_QUALITY_CIRRUS', 'QL_QUALITY_SNOW')
DATA_FIELDS = ('manual_dir', 'reflectance_scale', 'tile_size', 'tile_overlap',
               'min_valid_fraction', 'test_fraction')
_DROPPED = np.array(enmap.DROPPED_BANDS) - 1  # 0-based.
_KEPT = np.array([i for i in range(NUM_PRODUCT_BANDS) if i not in _DROPPED])


@dataclasses.dataclass(frozen=True)
class ProductRef:
  """Where a product's files are: `prefix + suffix` opens with rasterio."""
  name: str
  prefix: str  # Path or /vsizip/ path up to '-METADATA.XML'.
  zip_path: str = ''  # Set for products inside a .ZIP.
  members: tuple = ()  # Member names of the .ZIP.

  def exists(self, suffix):
    if self.zip_path:
      return self.prefix.split('/vsizip/' + self.zip_path + '/', 1)[1] + \
          suffix in self.members
    return os.path.isfile(self.prefix + suffix)

  def read_bytes(self, suffix):
    if self.zip_path:
      inner = self.prefix.split('/vsizip/' + self.zip_path + '/', 1)[1]
      with zipfile.ZipFile(self.zip_path) as z:
        return z.read(inner + suffix)
    return pathlib.Path(self.prefix + suffix).read_bytes()


def missing_products_message(manual_dir) -> str:
  return (f'config.data.manual_dir: no EnMAP L2A product in {manual_dir}: '
          f'expected product folders or .ZIP files holding '
          f'"*{METADATA_SUFFIX}" next to "*{SPECTRAL_SUFFIX}" under that '
          'folder (searched recursively).')


def find_products(manual_dir) -> list[ProductRef]:
  """Products under `manual_dir` (folders or .ZIPs), sorted by name."""
  root = pathlib.Path(os.path.expanduser(str(manual_dir)))
  if not root.is_dir():
    raise FileNotFoundError(missing_products_message(root))
  found = []
  for path in sorted(root.rglob('*')):
    name = path.name
    if name.upper().endswith(METADATA_SUFFIX) and path.is_file():
      prefix = str(path)[:-len(METADATA_SUFFIX)]
      found.append(ProductRef(name[:-len(METADATA_SUFFIX)], prefix))
    elif name.lower().endswith('.zip') and path.is_file():
      with zipfile.ZipFile(path) as z:
        members = tuple(z.namelist())
      for m in members:
        if m.upper().endswith(METADATA_SUFFIX):
          inner = m[:-len(METADATA_SUFFIX)]
          found.append(ProductRef(pathlib.PurePosixPath(inner).name,
                                  f'/vsizip/{path}/{inner}', str(path),
                                  members))
  if not found:
    raise FileNotFoundError(missing_products_message(root))
  return sorted(found, key=lambda p: p.name)


def parse_metadata(xml_bytes) -> dict[str, np.ndarray]:
  """Per-band arrays (224,) float64 from METADATA.XML, ordered by band number:
  `wavelengths_nm`, `fwhm_nm`, `gain`, `offset`."""
  root = ElementTree.fromstring(xml_bytes)
  bands = {}
  for el in root.iter('bandID'):
    centre = el.findtext('wavelengthCenterOfBand')
    if centre is None:  # bandID elsewhere (quality lists) without spectra.
      continue
    bands[int(el.get('number'))] = (
        float(centre), float(el.findtext('FWHMOfBand')),
        float(el.findtext('GainOfBand', '1')),
        float(el.findtext('OffsetOfBand', '0') or 0))
  if sorted(bands) != list(range(1, NUM_PRODUCT_BANDS + 1)):
    raise ValueError(f'METADATA.XML describes bands {sorted(bands)[:3]}...'
                     f'({len(bands)} bands); expected 1..{NUM_PRODUCT_BANDS}.')
  arr = np.array([bands[i] for i in range(1, NUM_PRODUCT_BANDS + 1)])
  return dict(zip(('wavelengths_nm', 'fwhm_nm', 'gain', 'offset'), arr.T))


class L2AProduct(readers.Reader):
  """Windowed reader of one product."""

  def __init__(self, ref: ProductRef, scale=0.0):
    self.name = ref.name
    meta = parse_metadata(ref.read_bytes(METADATA_SUFFIX))
    self.wavelengths_nm = meta['wavelengths_nm'][_KEPT]
    self.fwhm_nm = meta['fwhm_nm'][_KEPT]
    gain, offset = meta['gain'][_KEPT], meta['offset'][_KEPT]
    if scale > 0:
      gain, offset = np.full_like(gain, scale), np.zeros_like(offset)
    self._gain = gain.astype(np.float32)
    self._offset = offset.astype(np.float32)
    self._src = rasterio.open(ref.prefix + SPECTRAL_SUFFIX)
    src = self._src
    if src.count != NUM_PRODUCT_BANDS:
      raise ValueError(f'{ref.prefix + SPECTRAL_SUFFIX} has {src.count} bands; '
                       f'an L2A product has {NUM_PRODUCT_BANDS}.')
    self.shape = (src.height, src.width, len(_KEPT))
    self.crs = src.crs.to_wkt() if src.crs else ''
    self.transform = tuple(src.transform)[:6]
    self._quality = []
    for layer in QUALITY_LAYERS:
      suffix = f'-{layer}.TIF'
      if ref.exists(suffix):
        self._quality.append(rasterio.open(ref.prefix + suffix))
      else:
        logging.warning('%s: no %s; that mask is not applied.', ref.name,
                        layer)
    self._dropped_not_fill = 0

  def read_values(self, row, col, height, width):
    """(h, w, 218) reflectance; a pixel with any fill value or a quality flag
    set is NaN in every band (the product's validity is per pixel)."""
    raw = readers.read_window(self._src, row, col, height, width, FILL)
    self._dropped_not_fill += int((raw[_DROPPED] != FILL).sum())
    raw = np.moveaxis(raw[_KEPT], 0, -1)  # (h, w, 218) int16
    valid = ~(raw == FILL).any(-1)
    for q in self._quality:
      flags = readers.read_window(q, row, col, height, width, 0)
      valid &= ~(flags != 0).any(0)
    cube = raw.astype(np.float32) * self._gain + self._offset
    cube[~valid] = np.nan
    return cube

  def finish(self, warn=True, count=None):
    """Values of the water-vapour bands that were not fill in the windows
    read; logs a warning if any (or if `count`, summed elsewhere, is > 0)."""
    count = self._dropped_not_fill if count is None else count
    if warn and count:
      logging.warning(
          '%s: bands %s (1-based) are expected to be all fill (%d) but %d '
          'values are not; they are dropped anyway.', self.name,
          enmap.DROPPED_BANDS, FILL, count)
    return count

  def close(self):
    for f in [self._src] + self._quality:
      f.close()


def open_product(path, scale=0.0) -> L2AProduct:
  """A product from its METADATA.XML, its folder or its .ZIP."""
  path = pathlib.Path(path)
  if path.name.upper().endswith(METADATA_SUFFIX):
    return L2AProduct(ProductRef(path.name[:-len(METADATA_SUFFIX)],
                                 str(path)[:-len(METADATA_SUFFIX)]), scale)
  products = find_products(path) if path.is_dir() else [
      p for p in find_products(path.parent) if p.zip_path == str(path)]
  if len(products) != 1:
    raise ValueError(f'{path} holds {len(products)} L2A products; give one.')
  return L2AProduct(products[0], scale)


def is_product(path) -> bool:
  """True for a METADATA.XML, a product folder or a product .ZIP."""
  path = pathlib.Path(path)
  if path.name.upper().endswith(METADATA_SUFFIX):
    return True
  if path.is_dir():
    return any(path.glob('*' + METADATA_SUFFIX))
  if path.suffix.lower() == '.zip' and path.is_file():
    with zipfile.ZipFile(path) as z:
      return any(m.upper().endswith(METADATA_SUFFIX) for m in z.namelist())
  return False


@dataclasses.dataclass(eq=False, kw_only=True)
class L2AConfig(scene.TiledConfig):
  """Products and their tiling."""
  manual_dir: str
  products: tuple  # Product names found: new products, new build.

  def __post_init__(self):
    super().__post_init__()
    self.description = f'EnMAP L2A tiles of {len(self.products)} products.'

  def prefix(self):
    return 'l2a'


class EnmapL2ABuilder(scene.TiledScenes):
  """TFDS builder of EnMAP L2A tiles (`config.data.name = 'enmap_l2a'`)."""

  name = 'enmap_l2a'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Put EnMAP L2A products (folders or .ZIP files with "*{METADATA_SUFFIX}" '
      f'and "*{SPECTRAL_SUFFIX}") into the manual_dir '
      '(config.data.manual_dir).')
  DATA_FIELDS = DATA_FIELDS
  # Gains make reflectance; a value below -1 means fill got through them.
  NODATA_FIELD = 'config.data.reflectance_scale'
  EMPTY_FIELD = 'config.data.min_valid_fraction'

  @classmethod
  def make_builder_config(cls, data_dir, **params):
    """The config; `manual_dir` '' is `<data_dir>/downloads/manual`."""
    manual = params['manual_dir'] or os.path.join(data_dir, 'downloads',
                                                  'manual')
    manual = os.path.abspath(os.path.expanduser(manual))
    names = tuple(p.name for p in find_products(manual))
    return L2AConfig(**dict(params, manual_dir=manual), products=names)

  def manual_download_dir(self):
    return self.builder_config.manual_dir

  def _num_bands(self):
    return len(_KEPT)

  def _scenes(self, dl_manager):
    try:
      manual = dl_manager.manual_dir
    except AssertionError as e:
      raise FileNotFoundError(missing_products_message(
          self.builder_config.manual_dir)) from e
    scale = self.builder_config.reflectance_scale
    return [(r.name, functools.partial(L2AProduct, r, scale))
            for r in find_products(manual)]
