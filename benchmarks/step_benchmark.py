r"""Train-step benchmark: step time, images/s, FLOPs, MFU, memory, KARMA vs MAE.

  python benchmarks/step_benchmark.py --preset reference --out docs/benchmarks/gpu
  python benchmarks/step_benchmark.py --preset tiny --out /tmp/bench   # CPU smoke

The reference setting (so figures compare with other implementations): 224 x 224
tiles, 218 bands, patch 16, encoder 12 x 512 x 8 heads, decoder 8 x 512 x 8
heads, MLP ratio 4, 75 % masking, M = 8 endmembers, AdamW, bfloat16 compute with
float32 parameters. For each batch size and for KARMA and the MAE-only model
(LSMM off, SAM and LSMM weights 0) it compiles the real step
(`train.build_trainer`) and reports:

* step time: median over --steps timed steps after --warmup steps, each ended
  by `block_until_ready`; images/s = batch / step time;
* FLOPs per image, twice: `xla` from the compiled step's `cost_analysis()`
  (what XLA counts, including the optimiser and elementwise work) and
  `model` from an analytic count of matmuls (forward x 3 for training, the
  MFU convention); TFLOP/s and MFU use the analytic count against the dense
  bf16 peak of the device (H100/H200: 989 TFLOP/s; CPU: n/a);
* memory: `device.memory_stats()` peak (cumulative over the process; n/a on
  CPU) and the compiled step's own footprint from `memory_analysis()`;
* KARMA-over-MAE overhead (step time);
* end-to-end images/s over an untimed-per-step loop, for: device-resident
  synthetic data (the bound), `data.device_resident` gather, and the grain
  pipeline (`data.train_iterator`, copies prefetched to device two steps ahead
  as in training) on a built benchmark.
  The last two need grain and tensorflow-datasets; without them they are
  reported as skipped. Out-of-memory configurations are recorded as OOM.

The synthetic path imports only jax, flax, optax, orbax, numpy, einops, etils
and ml_collections (the last two pure Python wheels), so it runs on a bare GPU
machine; see docs/benchmarks/README.md for the one command.
"""

import argparse
import datetime
import gc
import json
import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# Allocate on demand so memory_stats() peaks reflect each configuration.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from kgmae_jax import config_lib
from kgmae_jax import patching
from kgmae_jax import report
from kgmae_jax import sharding
from kgmae_jax import tokenizers
from kgmae_jax import train

PRESETS = {
    # The issue's reference setting.
    "reference": dict(tile=224, bands=218, patch=16, width=512, depth=12,
                      heads=8, dec_width=512, dec_depth=8, dec_heads=8,
                      mlp_ratio=4.0, mask_ratio=0.75, endmembers=8,
                      batch_sizes="64,128,256", steps=20, warmup=3,
                      pipeline_tiles=512),
    # configs/quickstart.py's model and batch as the config sets them (patch 4,
    # width 64, 2 + 1 blocks, MLP ratio 2, pixel abundance head, M = 6,
    # batch 32, dtype auto: float32 on a CPU). Its CPU step time is the
    # issue's yardstick.
    "quickstart": dict(config="configs/quickstart.py", tile=32, bands=218,
                       batch_sizes="32", steps=20, warmup=3, pipeline_tiles=256,
                       dtype="auto"),
    # Seconds on a CPU; 218 bands so the real benchmark data feeds it.
    "tiny": dict(tile=16, bands=218, patch=8, width=32, depth=1, heads=2,
                 dec_width=32, dec_depth=1, dec_heads=2, mlp_ratio=2.0,
                 mask_ratio=0.75, endmembers=4, batch_sizes="4,8", steps=3,
                 warmup=1, pipeline_tiles=256),
}
# --cost rows: KARMA (the default pixel abundance head), KARMA with the
# paper's token head (configs/karma_enmap.py:paper), the MAE baseline.
COST_MODELS = ("karma", "karma_token", "mae")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # Dense, SXM.


def make_config(preset, *, lsmm, batch_size, dtype, attention, remat,
                grad_accum, pipeline_tiles=16, data_dir="", tokenizer=None):
  """A base_config with the preset's model (or the preset's config file);
  lsmm=False is the MAE baseline."""
  if "config" in preset:
    c = _config_file(preset["config"])
  else:
    c = _preset_config(preset)
  c.data.num_train = pipeline_tiles
  c.data.num_test = c.data.num_test_b = 0
  c.data.data_dir = data_dir
  c.data.num_workers = 4
  c.data.prefetch = 8
  c.model.dtype, c.model.attention, c.model.remat = dtype, attention, remat
  if tokenizer:  # None: the preset's (linear unless its config says otherwise).
    c.model.tokenizer = tokenizer
  c.lsmm.enabled = lsmm
  if not lsmm:
    c.loss.sam = c.loss.lsmm = 0.0
  c.train.batch_size = batch_size
  c.train.grad_accum_steps = grad_accum
  c.train.steps = 10_000
  return c


def describe(c, bands):
  """One line of the model and data shapes of config `c`."""
  m = c.model
  head = (f", {c.lsmm.head} abundance head" if c.lsmm.enabled else ", no LSMM")
  return (f"{c.data.tile_size}x{c.data.tile_size}x{bands}, patch {m.patch_size}, "
          f"{m.tokenizer} tokenizer, "
          f"enc {m.depth}x{m.width}x{m.num_heads}h, dec {m.dec_depth}x{m.dec_width}x"
          f"{m.dec_num_heads}h, mlp {m.mlp_ratio}, mask {m.mask_ratio}, "
          f"M={c.lsmm.num_endmembers}{head}, AdamW")


def _config_file(path):
  import importlib.util  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location("bench_config", root / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _preset_config(preset):
  c = config_lib.base_config()
  c.data.tile_size = preset["tile"]
  c.model.patch_size = preset["patch"]
  c.model.width, c.model.depth = preset["width"], preset["depth"]
  c.model.num_heads = preset["heads"]
  c.model.dec_width, c.model.dec_depth = preset["dec_width"], preset["dec_depth"]
  c.model.dec_num_heads = preset["dec_heads"]
  c.model.mlp_ratio = preset["mlp_ratio"]
  c.model.mask_ratio = preset["mask_ratio"]
  c.lsmm.num_endmembers = preset["endmembers"]
  return c


def tokenizer_macs(m, bands):
  """Multiply-accumulates of `m.tokenizer` for one patch of p*p pixels."""
  pp = m.patch_size ** 2
  if m.tokenizer == "band_groups":  # One Dense per band group.
    g = tokenizers.group_size(bands, m.band_groups)
    return m.band_groups * pp * g * m.width
  if m.tokenizer == "adapter":  # 1-D convolutions per pixel, then Dense.
    length, ch_in, per_pixel = bands, 1, 0
    for (kernel, stride), ch in zip(tokenizers.ADAPTER_CONVS, m.adapter_channels):
      length = -(-length // stride)
      per_pixel += length * kernel * ch_in * ch
      ch_in = ch
    per_pixel += length * ch_in * m.adapter_dim
    return pp * per_pixel + pp * m.adapter_dim * m.width
  return pp * bands * m.width  # The paper's linear patch embedding.


def analytic_flops_per_image(c, bands):
  """Training FLOPs per image: 3 x forward matmul FLOPs (2 per MAC).

  Counts what `model.KarmaMAE` computes: the tokenizer of the K visible
  patches (`tokenizer_macs`), encoder on K tokens (K*G with band groups),
  decoder on all L tokens, pixel head on the L - K
  masked ones, LSMM head (pixel head: token and spectrum projections, output
  per pixel; token head: MLP per token) and mixing A.a; attention as QK^T
  and AV. Elementwise work (norms, losses,
  softmax, optimiser) is left out, as in the usual MFU convention.
  """
  m = c.model
  p, tile = m.patch_size, c.data.tile_size
  seq = (tile // p) ** 2
  keep = patching.num_visible(seq, m.mask_ratio)
  pix = p * p * bands

  def stack(tokens, width, depth):
    hidden = int(width * m.mlp_ratio)
    per_token = 4 * width * width + 2 * width * hidden  # qkv+out, mlp (MACs).
    attention = 2 * tokens * tokens * width  # QK^T and AV (MACs).
    return depth * (tokens * per_token + attention)

  macs = keep * tokenizer_macs(m, bands)  # Tokenizer, per visible patch.
  seq_enc = tokenizers.sequence_length(m.tokenizer, keep, m.band_groups)
  macs += stack(seq_enc, m.width, m.depth)
  feat = tokenizers.feature_width(m.tokenizer, m.width, m.band_groups)
  macs += keep * feat * m.dec_width  # Decoder embedding.
  macs += stack(seq, m.dec_width, m.dec_depth)
  macs += (seq - keep) * m.dec_width * pix  # Pixel head, masked tokens.
  if c.lsmm.enabled:
    em, half = c.lsmm.num_endmembers, m.dec_width // 2
    if c.lsmm.head == "pixel":
      macs += seq * m.dec_width * half  # Token projection.
      macs += seq * pix * half  # Each pixel's spectrum projection.
      macs += seq * p * p * half * em  # Output layer per pixel.
      per_token = p * p
    else:
      out = em * p * p if c.lsmm.per_pixel else em
      macs += seq * (m.dec_width * half + half * out)
      per_token = p * p if c.lsmm.per_pixel else 1
    macs += seq * per_token * em * bands  # A.a.
  return 3 * 2 * macs


def _xla_flops(compiled):
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per computation.
    cost = cost[0] if cost else {}
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def _compiled_bytes(compiled):
  try:
    mem = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if mem is None:
    return None
  return int(mem.argument_size_in_bytes + mem.output_size_in_bytes
             + mem.temp_size_in_bytes - mem.alias_size_in_bytes)


def _peak_device_bytes(device):
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _is_oom(err):
  text = str(err)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "OOM" in text


def synthetic_batch(rng, n, tile, bands, batch_sharding):
  """Device-resident random reflectance in [0.02, 0.6], all pixels valid."""
  cube = rng.uniform(0.02, 0.6, (n, tile, tile, bands)).astype(np.float32)
  valid = np.ones((n, tile, tile), bool)
  return sharding.put_batch({"cube": cube, "valid": valid}, batch_sharding)


def measure_step(c, preset, mesh, args):
  """Compiles the step for config `c` and times it on device-resident data."""
  bands, n = preset["bands"], c.train.batch_size
  stats_mean = np.full(bands, 0.3, np.float32)
  stats_std = np.full(bands, 0.15, np.float32)
  trainer = train.build_trainer(c, mesh, bands, stats_mean, stats_std)
  state = trainer.init(jax.random.key(0))
  batch = synthetic_batch(np.random.default_rng(0), n, c.data.tile_size, bands,
                          trainer.batch_sharding)
  rng = jax.random.key(1)
  t0 = time.perf_counter()
  compiled = trainer.step.lower(state, batch, rng).compile()
  row = {"compile_s": time.perf_counter() - t0,
         "xla_flops_per_image": _xla_flops(compiled) / n,
         "compiled_bytes": _compiled_bytes(compiled)}
  for _ in range(args.warmup):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, rng)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  # Loop throughput without per-step sync (how training runs).
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready((state, metrics))
  loop_s = (time.perf_counter() - t0) / args.steps
  row.update(step_ms=1e3 * statistics.median(times), loop_ms=1e3 * loop_s,
             loss=float(metrics["loss"]))
  if args.profile_dir and c.lsmm.enabled and not os.path.exists(args.profile_dir):
    with jax.profiler.trace(args.profile_dir):  # First KARMA config only.
      for _ in range(3):
        state, metrics = compiled(state, batch, rng)
      jax.block_until_ready((state, metrics))
  return row, (trainer, compiled, state, rng)


def measure_pipeline(c, kind, handles, args):
  """Loop images/s of the compiled step fed by the grain pipeline ('grain')
  or by `data.device_resident` gathers ('device_resident')."""
  from kgmae_jax import data  # pylint: disable=g-import-not-at-top
  from kgmae_jax import device_data  # pylint: disable=g-import-not-at-top
  trainer, compiled, state, rng = handles
  n = c.train.batch_size
  if kind == "grain":
    it = device_data.prefetch(data.train_iterator(c.data, n, seed=0),
                              trainer.batch_sharding)
    feed = lambda: next(it)
  else:
    it = device_data.train_batches(c.data, trainer.batch_sharding, n, seed=0)
    feed = lambda: next(it)
  for _ in range(args.warmup):
    state, metrics = compiled(state, feed(), rng)
  jax.block_until_ready((state, metrics))
  t0 = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = compiled(state, feed(), rng)
  jax.block_until_ready((state, metrics))
  return n * args.steps / (time.perf_counter() - t0), state


def measure_inputs(c, handles, karma_row, args):
  """End-to-end rows: synthetic bound, device-resident gather, grain."""
  n = c.train.batch_size
  synth = n / (karma_row["loop_ms"] / 1e3)
  out = [dict(input="synthetic (device-resident)", batch=n, images_per_s=synth,
              vs_synthetic=0.0, status="ok")]
  try:
    import grain  # pylint: disable=g-import-not-at-top,unused-import
    import tensorflow_datasets  # pylint: disable=g-import-not-at-top,unused-import
    missing = None
  except ImportError as err:
    missing = f"skipped: {err.name} not installed"
  names = {"device_resident": "data.device_resident gather",
           "grain": "grain pipeline (host -> device)"}
  for kind in ("device_resident", "grain"):
    entry = dict(input=names[kind], batch=n, status=missing or "ok")
    if not missing:
      try:
        ips, state = measure_pipeline(c, kind, handles, args)
        handles = handles[:2] + (state,) + handles[3:]
        entry.update(images_per_s=ips, vs_synthetic=ips / synth - 1.0)
      except Exception as err:  # pylint: disable=broad-except
        if not _is_oom(err):
          raise
        entry["status"] = "OOM"
    out.append(entry)
  return out


def _xla_cost(compiled):
  """(flops, bytes accessed) of a compiled function from XLA's cost_analysis()."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per computation.
    cost = cost[0] if cost else {}
  cost = cost or {}
  return (float(cost.get("flops", float("nan"))),
          float(cost.get("bytes accessed", float("nan"))))


def compiled_step_cost(c, bands, batch, mesh):
  """XLA's (flops, bytes) of the real train step for config `c` at `batch`,
  compiled from abstract shapes (nothing is allocated or run)."""
  c = c.copy_and_resolve_references()
  c.train.batch_size = batch
  mean = np.full(bands, 0.3, np.float32)
  std = np.full(bands, 0.15, np.float32)
  trainer = train.build_trainer(c, mesh, bands, mean, std)
  tile = c.data.tile_size
  batch_spec = {
      "cube": jax.ShapeDtypeStruct((batch, tile, tile, bands), np.float32,
                                   sharding=trainer.batch_sharding),
      "valid": jax.ShapeDtypeStruct((batch, tile, tile), np.bool_,
                                    sharding=trainer.batch_sharding)}
  state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      trainer.abstract_state, trainer.state_shardings)
  rng = jax.eval_shape(lambda: jax.random.key(0))
  compiled = trainer.step.lower(state, batch_spec, rng).compile()
  return _xla_cost(compiled)


def cost_table(preset_name, dtype, attention, batches=(2, 4), tokenizer=None):
  """Per-image GFLOP and GB accessed of the compiled step, KARMA and MAE:
  (cost(b2) - cost(b1)) / (b2 - b1), which leaves out the per-step work that
  does not scale with the batch (the optimiser)."""
  preset = PRESETS[preset_name]
  mesh = sharding.make_mesh(config_lib.base_config().mesh,
                            devices=jax.devices()[:1])
  rows, setting = [], None
  for name in COST_MODELS:
    c = make_config(preset, lsmm=(name != "mae"), batch_size=batches[0],
                    dtype=dtype, attention=attention, remat=False, grad_accum=1,
                    tokenizer=tokenizer)
    if name == "karma_token":
      c.lsmm.head, c.lsmm.per_pixel = "token", False  # karma_enmap.py:paper's head.
    setting = setting or describe(c, preset["bands"])
    lo, hi = (compiled_step_cost(c, preset["bands"], b, mesh) for b in batches)
    per = [(h - l) / (batches[1] - batches[0]) for l, h in zip(lo, hi)]
    rows.append(dict(model=name, gflop_per_image=per[0] / 1e9,
                     gb_per_image=per[1] / 1e9, step_gflop=hi[0] / 1e9,
                     step_gb=hi[1] / 1e9))
  mae = rows[-1]
  pixel_mb = preset["tile"] ** 2 * preset["bands"] * 4 / 1e6
  lines = [
      f"Compiled train step, preset {preset_name} "
      f"({setting}), {dtype}, "
      f"attention {attention}; XLA cost_analysis() per extra image "
      f"(b{batches[1]} - b{batches[0]}) / {batches[1] - batches[0]}, "
      f"{jax.devices()[0].platform}, jax {jax.__version__}, git "
      f"{report.git_revision()}",
      "",
      "| model | GFLOP / image | GB accessed / image | image's pixels moved (x "
      f"{pixel_mb:.1f} MB f32) |",
      "|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['gflop_per_image']:.4g} "
                 f"| {r['gb_per_image']:.4g} "
                 f"| {r['gb_per_image'] * 1e3 / pixel_mb:.0f} |")
  lines.append("")
  for r in rows[:-1]:
    lines.append(f"{r['model']} / mae: FLOPs {r['gflop_per_image'] / mae['gflop_per_image']:.3f}, "
                 f"bytes {r['gb_per_image'] / mae['gb_per_image']:.3f}")
  return "\n".join(lines) + "\n", rows


def _fmt(x, spec):
  return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def markdown(result):
  meta, rows = result["meta"], result["rows"]
  lines = [f"# Train-step benchmark ({meta['platform'].upper()}: {meta['device_kind']})", "",
           f"- command: `{meta['command']}`",
           f"- device: {meta['num_devices']} x {meta['device_kind']} ({meta['platform']}), "
           f"peak bf16 {_fmt(meta['peak_tflops'], '.0f')} TFLOP/s",
           f"- jax {meta['jax_version']}, git {meta['git_revision']}, {meta['date']}",
           f"- preset {meta['preset']}: {meta['setting']}; dtype {meta['dtype']}, "
           f"attention {meta['attention']}, remat {meta['remat']}, "
           f"grad_accum {meta['grad_accum']}; median of {meta['steps']} steps "
           f"after {meta['warmup']} warm-up",
           "- FLOPs/img: `model` = analytic matmul count x 3 (used for TFLOP/s and "
           "MFU); `xla` = compiled step's cost_analysis(); peak mem = "
           "memory_stats() peak of the process so far (n/a on CPU); step mem = "
           "the compiled step's arguments + outputs + temporaries",
           "",
           "| model | batch | step ms | img/s | GFLOP/img model | GFLOP/img xla "
           "| TFLOP/s | MFU | peak mem GB | step mem GB | KARMA overhead | compile s | status |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    gb = lambda b: None if b is None else b / 1e9
    lines.append(
        f"| {r['model']} | {r['batch']} | {_fmt(r.get('step_ms'), '.2f')} "
        f"| {_fmt(r.get('images_per_s'), '.1f')} "
        f"| {_fmt(r['model_flops_per_image'] / 1e9, '.4g')} "
        f"| {_fmt(r.get('xla_flops_per_image', float('nan')) / 1e9, '.4g')} "
        f"| {_fmt(r.get('tflops'), '.3f')} | {_fmt(r.get('mfu'), '.1%')} "
        f"| {_fmt(gb(r.get('peak_bytes')), '.2f')} "
        f"| {_fmt(gb(r.get('compiled_bytes')), '.2f')} "
        f"| {_fmt(r.get('overhead'), '+.1%')} | {_fmt(r.get('compile_s'), '.1f')} "
        f"| {r['status']} |")
  if result["pipeline"]:
    lines += ["", "End-to-end (KARMA, loop without per-step sync):", "",
              "| input | batch | img/s | vs synthetic | status |", "|---|---|---|---|---|"]
    for p in result["pipeline"]:
      lines.append(f"| {p['input']} | {p['batch']} | {_fmt(p.get('images_per_s'), '.1f')} "
                   f"| {_fmt(p.get('vs_synthetic'), '+.1%')} | {p['status']} |")
  return "\n".join(lines) + "\n"


def run(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", choices=sorted(PRESETS), default="reference")
  ap.add_argument("--batch_sizes", default=None, help="e.g. 64,128,256")
  ap.add_argument("--models", default="karma,mae")
  ap.add_argument("--tokenizer", default=None, choices=list(tokenizers.TOKENIZERS),
                  help="model.tokenizer of every model (default: the preset's)")
  ap.add_argument("--dtype", default=None, choices=["auto", "bfloat16", "float32"],
                  help="default: the preset's (bfloat16; quickstart: its config's auto)")
  ap.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"])
  ap.add_argument("--remat", action="store_true")
  ap.add_argument("--grad_accum", type=int, default=1)
  ap.add_argument("--steps", type=int, default=None)
  ap.add_argument("--warmup", type=int, default=None)
  ap.add_argument("--num_devices", type=int, default=1)
  ap.add_argument("--pipeline", default="auto", choices=["auto", "off"],
                  help="auto: measure grain/device-resident input if grain is installed.")
  ap.add_argument("--pipeline_tiles", type=int, default=None,
                  help="train tiles built for the input-pipeline rows")
  ap.add_argument("--pipeline_batch", type=int, default=None,
                  help="batch size of the input-pipeline rows (default: the first)")
  ap.add_argument("--data_dir", default="", help="benchmark build dir ('' -> $KGMAE_DATA_DIR)")
  ap.add_argument("--peak_tflops", type=float, default=None)
  ap.add_argument("--out", default=None, help="directory for benchmark.md/.json")
  ap.add_argument("--cost", action="store_true",
                  help="only compile (no device time): XLA GFLOP and bytes "
                       "accessed per image of the step, KARMA and MAE")
  ap.add_argument("--profile_dir", default=None,
                  help="jax.profiler trace of 3 KARMA steps (first batch size)")
  args = ap.parse_args(argv)
  if args.dtype is None:
    args.dtype = PRESETS[args.preset].get("dtype", "bfloat16")
  if args.cost:
    table, rows = cost_table(args.preset, args.dtype, args.attention,
                             tokenizer=args.tokenizer)
    print(table)
    if args.out:
      out = pathlib.Path(args.out)
      out.mkdir(parents=True, exist_ok=True)
      (out / "cost.md").write_text(table)
    return {"cost": rows}
  preset = PRESETS[args.preset]
  args.steps = preset["steps"] if args.steps is None else args.steps
  args.warmup = preset["warmup"] if args.warmup is None else args.warmup
  tiles = preset["pipeline_tiles"] if args.pipeline_tiles is None else args.pipeline_tiles
  batch_sizes = [int(b) for b in (args.batch_sizes or preset["batch_sizes"]).split(",")]

  devices = jax.devices()[:args.num_devices]
  dev = devices[0]
  kind = dev.device_kind
  peak = args.peak_tflops
  if peak is None and dev.platform == "gpu":
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in kind), None)
  meta = dict(
      command="python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
      platform=dev.platform, device_kind=kind, num_devices=len(devices),
      peak_tflops=peak, jax_version=jax.__version__, git_revision=report.git_revision(),
      date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      preset=args.preset, dtype=args.dtype, attention=args.attention,
      remat=args.remat, grad_accum=args.grad_accum, steps=args.steps,
      warmup=args.warmup,
      setting=describe(make_config(preset, lsmm=True, batch_size=batch_sizes[0],
                                   dtype=args.dtype, attention=args.attention,
                                   remat=False, grad_accum=1), preset["bands"]))
  mesh_cfg = config_lib.base_config().mesh
  mesh = sharding.make_mesh(mesh_cfg, devices=devices)
  models = args.models.split(",")
  pipe_batch = batch_sizes[0] if args.pipeline_batch is None else args.pipeline_batch
  rows, pipeline = [], []
  for n in batch_sizes:
    for name in models:
      c = make_config(preset, lsmm=(name == "karma"), batch_size=n,
                      dtype=args.dtype, attention=args.attention,
                      remat=args.remat, grad_accum=args.grad_accum,
                      pipeline_tiles=tiles, data_dir=args.data_dir,
                      tokenizer=args.tokenizer)
      config_lib.validate(c, num_devices=len(devices), num_bands=preset["bands"])
      row = dict(model=name, batch=n, status="ok",
                 model_flops_per_image=analytic_flops_per_image(c, preset["bands"]))
      handles = None
      try:
        measured, handles = measure_step(c, preset, mesh, args)
        row.update(measured)
        row["images_per_s"] = n / (row["step_ms"] / 1e3)
        row["tflops"] = row["model_flops_per_image"] * row["images_per_s"] / 1e12
        row["mfu"] = row["tflops"] / peak if peak else None
        row["peak_bytes"] = _peak_device_bytes(dev)
      except Exception as err:  # pylint: disable=broad-except
        if not _is_oom(err):
          raise
        row["status"] = "OOM"
      rows.append(row)
      print(f"{name} batch {n}: {row['status']} {_fmt(row.get('step_ms'), '.2f')} ms",
            flush=True)
      if (name == "karma" and n == pipe_batch and handles is not None
          and args.pipeline == "auto"):
        pipeline = measure_inputs(c, handles, row, args)
      del handles
      gc.collect()
  mae = {r["batch"]: r for r in rows if r["model"] == "mae" and r["status"] == "ok"}
  for r in rows:
    if r["model"] == "karma" and r["status"] == "ok" and r["batch"] in mae:
      r["overhead"] = r["step_ms"] / mae[r["batch"]]["step_ms"] - 1.0

  result = {"meta": meta, "rows": rows, "pipeline": pipeline}
  table = markdown(result)
  print(table)
  if args.out:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.md").write_text(table)
    (out / "benchmark.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
  return result


if __name__ == "__main__":
  run()
