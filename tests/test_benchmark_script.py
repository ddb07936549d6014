"""benchmarks/step_benchmark.py: the tiny preset runs on CPU, writes the table
and JSON, and its synthetic path imports no grain/TFDS/matplotlib."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Absent on the GPU machine: the synthetic path must not need them.
BLOCKED = ("grain", "tensorflow_datasets", "tensorflow", "array_record",
           "matplotlib", "tensorboardX")
RUNNER = """
import runpy, sys
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in {blocked!r}:
      raise ImportError("blocked: " + name, name=name.split(".")[0])
sys.meta_path.insert(0, Block())
sys.argv = {argv!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def test_tiny_preset_writes_table_and_json(tmp_path):
  script = str(ROOT / "benchmarks" / "step_benchmark.py")
  argv = [script, "--preset", "tiny", "--batch_sizes", "2", "--steps", "2",
          "--warmup", "1", "--out", str(tmp_path)]
  code = RUNNER.format(blocked=BLOCKED, argv=argv, script=script)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((tmp_path / "benchmark.json").read_text())
  meta = result["meta"]
  assert meta["platform"] == "cpu" and meta["peak_tflops"] is None
  for key in ("jax_version", "git_revision", "command", "device_kind", "setting"):
    assert meta[key], key
  rows = {r["model"]: r for r in result["rows"]}
  assert set(rows) == {"karma", "mae"}
  for r in rows.values():
    assert r["status"] == "ok" and r["batch"] == 2
    assert r["step_ms"] > 0 and r["images_per_s"] > 0
    assert r["xla_flops_per_image"] > 0 and r["model_flops_per_image"] > 0
    assert r["mfu"] is None and r["compiled_bytes"] > 0
  # The LSMM head adds FLOPs; overhead is KARMA / MAE step time - 1.
  assert rows["karma"]["model_flops_per_image"] > rows["mae"]["model_flops_per_image"]
  assert abs(rows["karma"]["overhead"] - (
      rows["karma"]["step_ms"] / rows["mae"]["step_ms"] - 1)) < 1e-9
  inputs = {p["input"]: p for p in result["pipeline"]}
  assert inputs["synthetic (device-resident)"]["images_per_s"] > 0
  assert inputs["grain pipeline (host -> device)"]["status"].startswith("skipped: grain")
  table = (tmp_path / "benchmark.md").read_text()
  assert "| model | batch | step ms | img/s |" in table and "| karma | 2 |" in table
  assert "| mae | 2 |" in table and "MFU" in table and table in out.stdout


def test_analytic_flops_match_hand_count():
  sys.path.insert(0, str(ROOT))
  from benchmarks import step_benchmark as sb  # pylint: disable=g-import-not-at-top
  preset = dict(sb.PRESETS["reference"])
  c = sb.make_config(preset, lsmm=False, batch_size=64, dtype="bfloat16",
                     attention="auto", remat=False, grad_accum=1)
  # ViT-MAE at 224/16: L = 196 tokens, K = 49 visible, p*p*B = 55808 pixels.
  hand = (49 * 55808 * 512 + 12 * (49 * 12 * 512**2 + 2 * 49**2 * 512)
          + 49 * 512 * 512 + 8 * (196 * 12 * 512**2 + 2 * 196**2 * 512)
          + 147 * 512 * 55808)  # Pixel head on the 147 masked tokens.
  assert sb.analytic_flops_per_image(c, 218) == 6 * hand
  c.lsmm.enabled = True
  c.lsmm.head, c.lsmm.per_pixel = "token", False  # The paper's head.
  extra = 196 * (512 * 256 + 256 * 8) + 196 * 8 * 218
  assert sb.analytic_flops_per_image(c, 218) == 6 * (hand + extra)
  c.lsmm.head = "pixel"  # Token and spectrum projections, output per pixel.
  extra = (196 * 512 * 256 + 196 * 55808 * 256 + 196 * 256 * 256 * 8
           + 196 * 256 * 8 * 218)
  assert sb.analytic_flops_per_image(c, 218) == 6 * (hand + extra)


def test_analytic_flops_of_the_tokenizers():
  """Band groups: G Dense(p*p*g -> D) per patch, the encoder on K*G tokens,
  the decoder embedding from G*D; adapter: its convolutions per pixel."""
  sys.path.insert(0, str(ROOT))
  from benchmarks import step_benchmark as sb  # pylint: disable=g-import-not-at-top
  preset = dict(sb.PRESETS["reference"])
  c = sb.make_config(preset, lsmm=False, batch_size=64, dtype="bfloat16",
                     attention="auto", remat=False, grad_accum=1,
                     tokenizer="band_groups")
  c.model.band_groups = 8  # 218 bands: groups of 28, the last padded.
  k, gk = 49, 49 * 8
  hand = (k * 8 * 256 * 28 * 512 + 12 * (gk * 12 * 512**2 + 2 * gk**2 * 512)
          + k * 8 * 512 * 512 + 8 * (196 * 12 * 512**2 + 2 * 196**2 * 512)
          + 147 * 512 * 55808)
  assert sb.analytic_flops_per_image(c, 218) == 6 * hand
  c.model.tokenizer = "adapter"  # 218 -> 44 -> 9 -> 3 positions.
  per_pixel = (44 * 7 * 1 * 32 + 9 * 7 * 32 * 64 + 3 * 5 * 64 * 128
               + 3 * 128 * 32)
  hand = (k * (256 * per_pixel + 256 * 32 * 512)
          + 12 * (k * 12 * 512**2 + 2 * k**2 * 512)
          + k * 512 * 512 + 8 * (196 * 12 * 512**2 + 2 * 196**2 * 512)
          + 147 * 512 * 55808)
  assert sb.analytic_flops_per_image(c, 218) == 6 * hand


def test_cost_table_from_the_compiled_step(tmp_path):
  """--cost compiles (nothing runs) KARMA, KARMA with the token head and MAE and
  prints GFLOP and GB per image, differenced over two batch sizes."""
  script = str(ROOT / "benchmarks" / "step_benchmark.py")
  argv = [script, "--preset", "tiny", "--cost", "--out", str(tmp_path)]
  code = RUNNER.format(blocked=BLOCKED, argv=argv, script=script)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  table = (tmp_path / "cost.md").read_text()
  assert "| model | GFLOP / image | GB accessed / image |" in table
  rows = {line.split("|")[1].strip(): [float(x) for x in line.split("|")[2:4]]
          for line in table.splitlines() if line.startswith(("| karma", "| mae"))}
  assert set(rows) == {"karma", "karma_token", "mae"}
  assert all(v > 0 for r in rows.values() for v in r)
  assert rows["karma"][0] > rows["karma_token"][0] >= rows["mae"][0]  # GFLOP.
  assert "karma_token / mae: FLOPs" in table and table in out.stdout
