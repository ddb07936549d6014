"""Progress bars for long work: training, data builds, tiled prediction and
the tables run.

A bar is drawn on an interactive stderr only: never when $CI is set or when
stderr is a file or a pipe, so logs and CI output hold the log lines alone.
While a bar is drawn, stderr (absl's log lines) is written above it.
"""

import os
import sys

from absl import logging
import tqdm
from tqdm import contrib


def interactive(file=None) -> bool:
  """True when `file` (default stderr) is a terminal and $CI is unset."""
  file = sys.stderr if file is None else file
  ci = os.environ.get('CI', '').lower() not in ('', '0', 'false')
  isatty = getattr(file, 'isatty', None)
  return not ci and bool(isatty and isatty())


class Quiet:
  """What `bar` returns when nothing is drawn: tqdm's calls, doing nothing."""

  def update(self, n=1):
    del n

  def set_postfix(self, *args, **kwargs):
    del args, kwargs

  def close(self):
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class _Bar(tqdm.tqdm):
  """A tqdm bar that, while open, sends what is written to stderr (absl's log
  lines, warnings) through `tqdm.write`: above the bar, not glued to it."""

  def __init__(self, *, file, **kwargs):
    super().__init__(file=file, **kwargs)
    self._restore = []  # (object, attribute, value) to put back on close.
    if sys.stderr is file:  # Not when an outer bar redirected it already.
      above = contrib.DummyTqdmFile(file)
      self._restore.append((sys, 'stderr', file))
      sys.stderr = above
      handler = logging.get_absl_handler().python_handler
      if handler.stream is file:  # absl holds its own reference to stderr.
        self._restore.append((handler, 'stream', file))
        handler.stream = above

  def close(self):
    for obj, name, value in getattr(self, '_restore', ()):  # Also in __del__.
      setattr(obj, name, value)
    self._restore = []
    super().close()


def bar(total, desc, *, enabled=None, file=None, **kwargs):
  """A tqdm bar of `total` items (None: unknown) named `desc`, or `Quiet()`.

  Either has update(n), set_postfix(**values), close() and `with`.
  enabled: None draws it when `interactive(file)`; True / False force it.
  file: where it is drawn (default stderr); kwargs go to tqdm (unit, initial).
  """
  file = sys.stderr if file is None else file
  if not (interactive(file) if enabled is None else enabled):
    return Quiet()
  return _Bar(total=total, desc=desc, file=file, dynamic_ncols=True, **kwargs)
