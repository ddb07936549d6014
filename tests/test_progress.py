"""progress.bar: drawn on a terminal, quiet under CI and in logs."""

import io
import sys

from absl import logging

from kgmae_jax import progress


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_quiet_under_ci_and_when_not_a_terminal(monkeypatch):
  monkeypatch.delenv('CI', raising=False)
  assert progress.interactive(_Terminal())
  assert not progress.interactive(io.StringIO())  # A log file or a pipe.
  for value in ('true', '1'):
    monkeypatch.setenv('CI', value)
    assert not progress.interactive(_Terminal())
  monkeypatch.setenv('CI', 'false')
  assert progress.interactive(_Terminal())
  monkeypatch.setenv('CI', 'true')
  out = _Terminal()
  with progress.bar(3, 'train', file=out) as b:
    assert isinstance(b, progress.Quiet)
    b.update()
    b.set_postfix(loss=0.5)
  assert out.getvalue() == ''


def test_forced_bar_writes_count_postfix_and_keeps_log_lines_apart(
    monkeypatch):
  monkeypatch.setenv('CI', 'true')  # Forcing wins over the environment.
  out = io.StringIO()
  monkeypatch.setattr(sys, 'stderr', out)
  handler = logging.get_absl_handler().python_handler
  monkeypatch.setattr(handler, 'stream', out)  # absl's reference to stderr.
  b = progress.bar(4, 'train', enabled=True, file=out, unit='step',
                   mininterval=0)
  assert not isinstance(b, progress.Quiet)
  b.update(3)
  b.set_postfix(loss='0.1234')
  handler.stream.write('I0101 a log line\n')  # What absl's handler does.
  sys.stderr.write('W0101 a warning\n')
  b.update()
  b.close()
  assert handler.stream is out and sys.stderr is out  # Restored on close.
  text = out.getvalue()
  assert 'train' in text and '3/4' in text and '4/4' in text
  assert 'loss=0.1234' in text
  # The bar is cleared before the log line, so it starts a line of its own.
  for start, message in (('I0101', 'a log line'), ('W0101', 'a warning')):
    line = next(s for s in text.split('\r') if message in s)
    assert line.lstrip().startswith(start) and line.endswith('\n')
  assert progress.bar(4, 'x', enabled=False, file=out).update(1) is None
