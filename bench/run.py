"""`make bench`: training MFU and throughput against Hugging Face transformers, decoding speed, input
pipelines and peak memory, measured side by side in one run.

    python bench/run.py                       # CPU default (DESIGN.md §5): S-S shape, 4+4 layers, vocab 32k
    python bench/run.py --gpu                 # one GPU: 2B-2B, bfloat16, Adafactor, scan + remat
    python bench/run.py --tiny --out /tmp/b.json   # seconds; what tests/test_bench.py runs
    python bench/run.py --parts matmul,train --breakdown   # a subset; per-component timing of the step

Every part runs in its own subprocess (clean peak RSS, no cross-talk between JAX and torch):
  matmul     measured matmul peak: JAX and torch float32 (bfloat16 on accelerators)
  export     random weights written once as a HF T5Gemma directory (`export_t5gemma`)
  train      our `Trainer.train_step` (forward + backward + optimizer, jit, donated state)
  hf_train   `transformers.T5GemmaForConditionalGeneration`, same config, batch and optimizer (torch)
  decode     our KV-cached greedy `decoding.generate` over the exported weights
  hf_decode  transformers' greedy `generate` over the same weights and lengths
  pipelines  UL2 and PrefixLM input pipelines (tokens -> model features), needs TensorFlow

Model FLOPs per step (`trainer.training_flops_per_step`, DESIGN.md §5) = 3 x forward, forward =
every matmul at 2 FLOPs per multiply-add (q/k/v/o and cross-attention projections on their own
token counts, GeGLU as three matrices, the output head over the target tokens) + 4 x B x Tq x Tkv x
heads x head_dim per attention; no recomputation counted. MFU = model FLOPs / step time / peak, the
peak being the matmul rate measured in the same run (JAX's for ours, torch's for transformers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

PARTS = ("matmul", "export", "train", "hf_train", "decode", "hf_decode", "pipelines")
TARGETS = {  # benchmark targets (issue 8), not assertions
    "cpu": {"mfu": 0.60, "train_ratio": 1.5, "decode_ratio": 2.0, "pipeline_ratio": 3.0},
    "gpu": {"mfu": 0.50, "train_ratio": 1.6, "decode_ratio": 2.0, "pipeline_ratio": 3.0},
}


@dataclasses.dataclass
class BenchConfig:
    """What one bench run measures (every part reads the same config)."""

    preset: str = "S-S"
    num_layers: Optional[int] = 4  # per stack; None: the preset's
    vocab_size: Optional[int] = 32_000  # None: the preset's
    batch: int = 8
    inputs_length: int = 256
    targets_length: int = 256
    decode_length: int = 256
    steps: int = 5
    warmup: int = 2
    dtype: str = "float32"
    param_dtype: str = "float32"
    hf_dtype: Optional[str] = None  # transformers' weight dtype (None: param_dtype); bf16 on GPU
    optimizer: str = "adamw"
    remat: str = "none"
    scan: bool = False
    matmul_size: int = 2048
    threads: int = 0  # 0: every core this process may use
    pipeline_examples: int = 2048
    gpu: bool = False
    breakdown: bool = False  # per-component timing of the train step (forward, backward, optimizer, head)
    profile: bool = False  # op-level profile of the train step (jax.profiler trace)

    def model_config(self):
        """The `EncoderDecoderConfig` under test."""
        from adaptation.models import presets

        overrides = dict(dtype=self.dtype, param_dtype=self.param_dtype, scan_layers=self.scan,
                         remat_policy=self.remat)
        if self.num_layers:
            overrides["num_layers"] = self.num_layers
        if self.vocab_size:
            overrides["vocab_size"] = self.vocab_size
        return presets.encoder_decoder(self.preset, **overrides)

    @property
    def tokens_per_step(self) -> int:
        return self.batch * (self.inputs_length + self.targets_length)


def _cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _threads(cfg: BenchConfig) -> int:
    return cfg.threads or len(_cores())


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _random_tokens(rng, shape, vocab: int):
    return rng.integers(3, vocab, shape).astype("int32")


def _train_batch(cfg: BenchConfig, vocab: int) -> dict:
    """Full-length rows (no padding), decoder inputs = targets shifted right after bos (2)."""
    import numpy as np

    rng = np.random.default_rng(0)
    enc = _random_tokens(rng, (cfg.batch, cfg.inputs_length), vocab)
    targets = _random_tokens(rng, (cfg.batch, cfg.targets_length), vocab)
    dec_in = np.concatenate([np.full((cfg.batch, 1), 2, np.int32), targets[:, :-1]], axis=1)
    return {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": np.ones_like(targets, dtype=np.float32),
    }


# ------------------------------------------------------------------------------------------------
# Parts (each runs in its own process and returns a JSON-able dict).


def _jax_device_info() -> dict:
    import jax

    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "num_devices": jax.device_count()}


def _jax_device_peak_bytes() -> Optional[int]:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _time_best(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def part_matmul(cfg: BenchConfig, work: str) -> dict:
    """Matmul rate of an n x n x n product, JAX then torch: float32 (and bfloat16 on accelerators)."""
    import jax

    n = cfg.matmul_size
    flops = 2.0 * n**3
    out: dict[str, Any] = {"n": n, **_jax_device_info()}
    dtypes = ["float32"] + (["bfloat16"] if jax.devices()[0].platform != "cpu" else [])
    for dt in dtypes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dt)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dt)
        f = jax.jit(lambda x, y: x @ y)
        f(a, b).block_until_ready()
        reps = 5 if n >= 1024 else 50
        # Several products per timing so that dispatch does not count on small sizes.
        sec = _time_best(lambda: [f(a, b) for _ in range(3)][-1].block_until_ready(), reps) / 3
        out[f"jax_{dt}_gflops"] = flops / sec / 1e9
    out["peak_rss_mib_jax"] = _peak_rss_mib()

    import torch

    torch.set_num_threads(_threads(cfg))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for dt in dtypes:
        tdt = getattr(torch, dt)
        a = torch.randn(n, n, dtype=tdt, device=device)
        b = torch.randn(n, n, dtype=tdt, device=device)

        def run():
            for _ in range(3):
                c = a @ b
            if device == "cuda":
                torch.cuda.synchronize()
            return c

        run()
        sec = _time_best(run, 5 if n >= 1024 else 50) / 3
        out[f"torch_{dt}_gflops"] = flops / sec / 1e9
    out["torch_threads"] = torch.get_num_threads()
    out["peak_rss_mib"] = _peak_rss_mib()
    return out


def part_export(cfg: BenchConfig, work: str) -> dict:
    """Random weights (seed 0, per-layer layout) written as a HF T5Gemma directory under `work`."""
    import jax

    from adaptation import trainer
    from adaptation.checkpoints.hf_t5gemma import export_t5gemma
    from adaptation.models import EncoderDecoder

    config = cfg.model_config()
    per_layer = config.replace(
        encoder=config.encoder.replace(scan_layers=False, remat_policy="none"),
        decoder=config.decoder.replace(scan_layers=False, remat_policy="none"),
    )
    params = trainer.nn_unbox(trainer.model_init_fn(EncoderDecoder(per_layer))(jax.random.PRNGKey(0)))
    params = jax.tree.map(lambda x: x.astype(cfg.param_dtype), params)
    start = time.perf_counter()
    export_t5gemma(os.path.join(work, "hf"), per_layer, params, dtype=cfg.hf_dtype or cfg.param_dtype, overwrite=True)
    n = sum(x.size for x in jax.tree.leaves(params))
    return {"params": int(n), "export_s": time.perf_counter() - start, "peak_rss_mib": _peak_rss_mib()}


def _optimizer_config(cfg: BenchConfig):
    from adaptation.trainer import OptimizerConfig

    return OptimizerConfig(name=cfg.optimizer, learning_rate=1e-4, schedule="constant", warmup_steps=0,
                           clip_norm=1.0, weight_decay=0.0)


def part_train(cfg: BenchConfig, work: str) -> dict:
    """Our train step: `Trainer` on a one-device mesh, cross-entropy (+ z-loss), AdamW/Adafactor."""
    import functools

    import jax

    from adaptation import partitioning, trainer
    from adaptation.models import EncoderDecoder
    from adaptation.objectives.losses import cross_entropy_loss_fn

    config = cfg.model_config()
    model = EncoderDecoder(config)
    batch = _train_batch(cfg, config.decoder.vocab_size)
    mesh_cfg = partitioning.MeshConfig(mesh_shape=(1, 1, 1))
    mesh = partitioning.make_mesh(mesh_cfg, jax.devices()[:1])
    tcfg = trainer.TrainConfig(num_train_steps=1_000_000, optimizer=_optimizer_config(cfg))
    loss_fn = functools.partial(cross_entropy_loss_fn, z_loss=1e-4)
    tr = trainer.Trainer(model, tcfg, mesh, mesh_cfg.rules, loss_fn, batch)
    state = tr.init_state()
    num_params = int(sum(x.size for x in jax.tree.leaves(state.params)))

    start = time.perf_counter()
    state, metrics = tr.train_step(state, batch)
    first_loss = float(metrics["loss"])  # host sync: compile + first step
    compile_s = time.perf_counter() - start
    for _ in range(cfg.warmup - 1):
        state, metrics = tr.train_step(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(cfg.steps):  # no host syncs inside the loop
        state, metrics = tr.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / cfg.steps
    flops = trainer.training_flops_per_step(config, cfg.batch, cfg.inputs_length, cfg.targets_length)
    out = {
        **_jax_device_info(),
        "params": num_params,
        "mesh": dict(zip(partitioning.MESH_AXES, mesh.devices.shape)),
        "compile_and_first_step_s": compile_s,
        "step_s": step_s,
        "tokens_per_s": cfg.tokens_per_step / step_s,
        "model_flops_per_step": flops,
        "model_tflops_per_s": flops / step_s / 1e12,
        "loss_first": first_loss,
        "loss_last": float(metrics["loss"]),
        "spec_peak_flops": trainer.peak_flops_per_device(),
        "device_peak_bytes": _jax_device_peak_bytes(),
    }
    if cfg.breakdown:
        out["breakdown"] = _train_breakdown(cfg, tr, state, batch, loss_fn)
    if cfg.profile:
        out["profile"] = _train_profile(cfg, tr, state, batch, work)
    out["peak_rss_mib"] = _peak_rss_mib()
    return out


def _train_breakdown(cfg: BenchConfig, tr, state, batch: dict, loss_fn) -> dict:
    """Per-component step time: forward (loss), forward + backward, the optimizer update alone, and
    the output head + cross-entropy alone (forward and backward over a [B*T, D] hidden state)."""
    import jax
    import jax.numpy as jnp
    import optax

    from adaptation import partitioning
    from adaptation.objectives.fused_xent import fused_cross_entropy

    dev_batch = partitioning.host_batch_to_global(batch, tr.mesh)
    params = state.params

    def timed(fn, *args):
        out = fn(*args)
        jax.block_until_ready(out)
        start = time.perf_counter()
        for _ in range(cfg.steps):
            out = fn(*args)
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / cfg.steps

    loss = lambda p, b: loss_fn(p, b, None, model=tr.model)[0]  # noqa: E731
    jit = lambda f: partitioning.jit_on_mesh(f, tr.mesh, tr.rules)  # noqa: E731
    fwd = timed(jit(loss), params, dev_batch)
    fwd_bwd = timed(jit(jax.grad(loss)), params, dev_batch)
    grads = jit(jax.grad(loss))(params, dev_batch)
    opt = timed(jit(lambda g, s, p: optax.apply_updates(p, tr.tx.update(g, s, p)[0])), grads, state.opt_state, params)

    dec = tr.model.config.decoder
    table = params["decoder_embedder"]["embedding"]
    hidden = jax.random.normal(jax.random.PRNGKey(0), (cfg.batch, cfg.targets_length, dec.embed_dim), dec.compute_dtype)
    targets = dev_batch["decoder_target_tokens"]

    def head_loss(h, t):  # what `cross_entropy_loss_fn` runs: the fused, chunked head
        total, _, denom, _ = fused_cross_entropy(h, t, targets, jnp.ones(targets.shape), z_loss=1e-4,
                                                 soft_cap=dec.final_logit_soft_cap)
        return total / denom

    head = timed(jit(jax.grad(head_loss, argnums=(0, 1))), hidden, table)
    return {"forward_s": fwd, "forward_backward_s": fwd_bwd, "optimizer_s": opt, "head_xent_fwd_bwd_s": head}


_SKIP_EVENTS = re.compile(r"^(end: |ThunkExecutor|SlinkyThreadPool|Eigen|\$)")
_LAYER_INDEX = re.compile(r"layers_\d+")


def _op_categories(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (opcode or fusion kind, jax source op_name) of a compiled module."""
    table = {}
    pattern = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? (\w[\w\-]*)\(")
    for line in hlo_text.splitlines():
        m = pattern.match(line)
        if m:
            name, opcode = m.group(1), m.group(2)
            meta = re.search(r'op_name="([^"]*)"', line)
            op_name = meta.group(1) if meta else ""
            kind = re.search(r"kind=(\w+)", line)
            table.setdefault(name, (opcode + (f"({kind.group(1)})" if kind else ""), op_name))
    return table


def _source_label(op_name: str) -> str:
    """A short, layer-independent label for a jax op_name like
    'jit(traced)/transpose(jvp(EncoderDecoder))/decoder/layers_3/attn/dot_general'."""
    label = _LAYER_INDEX.sub("layers_*", op_name)
    label = re.sub(r"^jit\([^)]*\)/", "", label)
    parts = [p for p in label.split("/") if p]
    direction = "bwd" if any(p.startswith("transpose(") for p in parts) else "fwd"
    parts = [re.sub(r"^(transpose|jvp)\((.*)\)$", r"\2", p) for p in parts]
    parts = [re.sub(r"^(transpose|jvp)\((.*)\)$", r"\2", p) for p in parts]
    return f"{direction}: " + "/".join(parts[-4:]) if parts else "?"


def _train_profile(cfg: BenchConfig, tr, state, batch: dict, work: str, top: int = 25) -> dict:
    """An op-level profile of the train step (`jax.profiler` trace of `cfg.steps` steps): time per
    compiled HLO op summed over the XLA threads, grouped by op and by jax source location."""
    import collections
    import glob

    import jax

    from adaptation import partitioning

    dev_batch = partitioning.host_batch_to_global(batch, tr.mesh)
    with jax.set_mesh(tr.mesh):
        hlo = tr._train_step.jitted.lower(state, dev_batch, None).compile().as_text()
    table = _op_categories(hlo)
    trace_dir = os.path.join(work, "trace")
    jax.block_until_ready(state)
    jax.profiler.start_trace(trace_dir)
    start = time.perf_counter()
    for _ in range(cfg.steps):
        state, metrics = tr.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    wall = (time.perf_counter() - start) / cfg.steps
    jax.profiler.stop_trace()
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError:
        return {"skipped": "parsing the trace needs tensorflow's xplane_pb2"}
    space = xplane_pb2.XSpace()
    with open(sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1], "rb") as f:
        space.ParseFromString(f.read())
    by_op: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for ev in line.events:
                name = names[ev.metadata_id].name
                if not _SKIP_EVENTS.match(name):
                    by_op[name] += ev.duration_ps / 1e12 / cfg.steps
    total = sum(by_op.values())
    by_kind: collections.Counter = collections.Counter()
    by_source: collections.Counter = collections.Counter()
    for name, sec in by_op.items():
        kind, op_name = table.get(name, ("?", ""))
        kind = "matmul (ynn/dot)" if name.startswith("ynn_fusion") or kind.startswith("dot") else kind
        by_kind[kind] += sec
        by_source[_source_label(op_name)] += sec
    pct = lambda sec: round(100 * sec / total, 2) if total else 0.0  # noqa: E731
    return {
        "step_wall_s": wall,
        "op_seconds_per_step": total,
        "note": "op seconds are summed over XLA's threads; ops of one step may run concurrently",
        "by_kind_pct": {k: pct(v) for k, v in by_kind.most_common()},
        "by_source_pct": {k: pct(v) for k, v in by_source.most_common(top)},
        "top_ops": [
            {"op": n, "kind": table.get(n, ("?", ""))[0], "pct": pct(v), "source": _source_label(table.get(n, ("", ""))[1])}
            for n, v in by_op.most_common(top)
        ],
    }


def _torch_setup(cfg: BenchConfig):
    import torch

    torch.set_num_threads(_threads(cfg))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch, device


def _hf_model(cfg: BenchConfig, work: str, torch, device):
    from transformers import T5GemmaForConditionalGeneration

    dtype = getattr(torch, cfg.hf_dtype or cfg.param_dtype)
    model = T5GemmaForConditionalGeneration.from_pretrained(
        os.path.join(work, "hf"), attn_implementation="eager", dtype=dtype
    ).to(device)
    return model


def part_hf_train(cfg: BenchConfig, work: str) -> dict:
    """transformers T5Gemma: same config, batch and optimizer (torch AdamW / Adafactor), eager attention."""
    torch, device = _torch_setup(cfg)
    model = _hf_model(cfg, work, torch, device)
    model.train()
    if cfg.remat != "none":
        model.gradient_checkpointing_enable()
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    else:
        from transformers.optimization import Adafactor

        opt = Adafactor(model.parameters(), lr=1e-4, relative_step=False, scale_parameter=False)
    b = {k: torch.from_numpy(v).to(device) for k, v in _train_batch(cfg, model.config.vocab_size).items()}
    weight_dtype = cfg.hf_dtype or cfg.param_dtype
    autocast = torch.autocast(device, dtype=getattr(torch, cfg.dtype), enabled=cfg.dtype != weight_dtype)

    def step():
        with autocast:
            out = model(
                input_ids=b["encoder_input_tokens"].long(),
                attention_mask=torch.ones_like(b["encoder_input_tokens"]),
                decoder_input_ids=b["decoder_input_tokens"].long(),
                labels=b["decoder_target_tokens"].long(),
            )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    first_loss = float(step())
    for _ in range(cfg.warmup - 1):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(cfg.steps):
        loss = step()
    last_loss = float(loss)
    step_s = (time.perf_counter() - start) / cfg.steps
    from adaptation import trainer

    flops = trainer.training_flops_per_step(cfg.model_config(), cfg.batch, cfg.inputs_length, cfg.targets_length)
    return {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "step_s": step_s,
        "tokens_per_s": cfg.tokens_per_step / step_s,
        "model_tflops_per_s": flops / step_s / 1e12,
        "loss_first": first_loss,
        "loss_last": last_loss,
        "device_peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
        "peak_rss_mib": _peak_rss_mib(),
    }


def _decode_inputs(cfg: BenchConfig, vocab: int):
    import numpy as np

    return _random_tokens(np.random.default_rng(1), (cfg.batch, cfg.inputs_length), vocab)


def part_decode(cfg: BenchConfig, work: str) -> dict:
    """Our KV-cached greedy `generate` (jit, one while-loop) on the exported weights; the timed call is
    the second (the first compiles). eos never stops a row, so every row decodes `decode_length`."""
    import jax
    import numpy as np

    from adaptation import decoding
    from adaptation.checkpoints.hf_t5gemma import import_t5gemma
    from adaptation.models import EncoderDecoder, layout

    config = cfg.model_config()
    _, params = import_t5gemma(os.path.join(work, "hf"))
    scan = config.decoder.scan_layers
    params = layout.map_stacks(params, lambda s: layout.to_config_layout(s, scan))
    params = jax.device_put(jax.tree.map(lambda x: np.asarray(x, cfg.param_dtype), params))
    model = EncoderDecoder(config)
    enc = _decode_inputs(cfg, config.decoder.vocab_size)

    def run():
        out = decoding.generate(model, params, enc, max_decode_length=cfg.decode_length, eos_id=-1)
        return np.asarray(out)

    start = time.perf_counter()
    run()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    ids = run()
    sec = time.perf_counter() - start
    np.save(os.path.join(work, "decode_ours.npy"), ids)
    return {
        **_jax_device_info(),
        "compile_and_first_call_s": compile_s,
        "s": sec,
        "tokens_per_s": cfg.batch * cfg.decode_length / sec,
        "device_peak_bytes": _jax_device_peak_bytes(),
        "peak_rss_mib": _peak_rss_mib(),
    }


def part_hf_decode(cfg: BenchConfig, work: str) -> dict:
    """transformers' greedy `generate` (its KV cache) on the same weights, inputs and lengths."""
    import numpy as np

    torch, device = _torch_setup(cfg)
    model = _hf_model(cfg, work, torch, device).eval()
    enc = torch.from_numpy(_decode_inputs(cfg, model.config.vocab_size)).long().to(device)
    kw = dict(attention_mask=torch.ones_like(enc), do_sample=False, num_beams=1, decoder_start_token_id=2,
              pad_token_id=0, eos_token_id=1)

    def run(length):
        with torch.inference_mode():
            out = model.generate(enc, max_new_tokens=length, min_new_tokens=length, **kw)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    run(2)
    start = time.perf_counter()
    out = run(cfg.decode_length)
    sec = time.perf_counter() - start
    ids = out[:, 1:].cpu().numpy()  # drop the decoder start token
    ours_path = os.path.join(work, "decode_ours.npy")
    agreement = None
    if os.path.exists(ours_path):
        ours = np.load(ours_path)
        n = min(ours.shape[1], ids.shape[1])
        agreement = float(np.mean(ours[:, :n] == ids[:, :n]))
    return {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "s": sec,
        "tokens_per_s": cfg.batch * ids.shape[1] / sec,
        "generated_length": int(ids.shape[1]),
        "token_agreement_with_ours": agreement,
        "device_peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
        "peak_rss_mib": _peak_rss_mib(),
    }


def part_pipelines(cfg: BenchConfig, work: str) -> dict:
    """UL2 (T5Gemma 2 mixture) and PrefixLM from token rows to batched model features (seqio
    encoder-decoder converter, padded to the bench lengths): examples/s and model tokens/s."""
    try:
        import tensorflow as tf
    except ImportError as e:  # the GPU machines have no TensorFlow
        return {"skipped": f"TensorFlow is not installed ({e})"}
    import numpy as np

    from adaptation.data.features import feature_converter
    from adaptation.data.iterator import pipeline_options
    from adaptation.objectives import prefix_lm, ul2, vocabularies
    from bench.preprocessors import _rate

    vocab = cfg.model_config().decoder.vocab_size
    lengths = {"inputs": cfg.inputs_length, "targets": cfg.targets_length}
    n = cfg.pipeline_examples
    ul2_len = min(cfg.inputs_length, cfg.targets_length) - 2  # as tasks.pretraining.ul2_preprocessor
    pfx_len = prefix_lm.prefix_lm_length(lengths)
    rng = np.random.default_rng(0)

    def source(length):
        rows = _random_tokens(rng, (n, length), vocab)
        ds = tf.data.Dataset.from_tensor_slices({"targets": rows}).cache()
        ds.reduce(np.int64(0), lambda acc, _: acc + 1)  # fill the cache: reading is not timed
        return ds

    def to_model(ds):  # the trainer's options (`BatchIterator`), then its converter and batching
        return feature_converter("encoder_decoder")(ds, lengths).batch(cfg.batch).with_options(pipeline_options())

    sentinels = vocabularies.sentinel_ids(vocab, ul2.max_spans(ul2.T5GEMMA2_DENOISERS, ul2_len))
    ul2_ds = ul2.ul2_denoise(source(ul2_len), ul2.T5GEMMA2_DENOISERS, seed=0, sentinel_ids=sentinels,
                             max_length=ul2_len, batch_size=128)
    pfx_ds = prefix_lm.split_in_half(source(pfx_len))
    out: dict[str, Any] = {"examples": n, "threads": "one per core (autotuning off, as in training)"}
    for name, ds, length in (("ul2", ul2_ds, ul2_len), ("prefix_lm", pfx_ds, pfx_len)):
        examples_per_s = _rate(to_model(ds), n)  # `_rate` counts what it is given: examples here
        out[name] = {
            "source_tokens_per_example": length,
            "examples_per_s": examples_per_s,
            "tokens_per_s": examples_per_s * (cfg.inputs_length + cfg.targets_length),
        }
    out["peak_rss_mib"] = _peak_rss_mib()
    return out


PART_FNS = {
    "matmul": part_matmul,
    "export": part_export,
    "train": part_train,
    "hf_train": part_hf_train,
    "decode": part_decode,
    "hf_decode": part_hf_decode,
    "pipelines": part_pipelines,
}


# ------------------------------------------------------------------------------------------------
# Orchestration.


def _child_env() -> dict:
    """`host_env.cpu_child_env` (one host device: the Makefile's 8 emulated devices would split the
    batch over 2 cores; malloc on huge pages for every part, ours and transformers' alike)."""
    from adaptation import host_env

    env = host_env.cpu_child_env()
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_part(name: str, cfg: BenchConfig, work: str, timeout: float, inprocess: bool = False) -> dict:
    """Runs one part in a fresh interpreter pinned to the bench's cores (or, `inprocess`, here: faster,
    but peak RSS then accumulates over parts); its result dict, or `{"error": ...}` with the tail of
    its stderr."""
    if inprocess:
        import traceback

        start = time.perf_counter()
        try:
            out = PART_FNS[name](cfg, work)
        except Exception:  # noqa: BLE001 - reported in the table, the other parts still run
            return {"error": traceback.format_exc()[-2000:]}
        out["wall_s"] = time.perf_counter() - start
        return out
    result = os.path.join(work, f"{name}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--_part", name, "--_work", work,
           "--_config", json.dumps(dataclasses.asdict(cfg))]
    cores = _cores()[: _threads(cfg)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, timeout=timeout,
                              preexec_fn=lambda: os.sched_setaffinity(0, cores))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not os.path.exists(result):
        return {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    with open(result) as f:
        out = json.load(f)
    out["wall_s"] = wall
    return out


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a and b else None


def summarize(cfg: BenchConfig, parts: dict) -> dict:
    """Derived figures: MFU against the measured peaks, ours / transformers ratios, pipeline headroom,
    and which targets are met."""
    mm, tr, hf = parts.get("matmul", {}), parts.get("train", {}), parts.get("hf_train", {})
    dec, hfd, pipe = parts.get("decode", {}), parts.get("hf_decode", {}), parts.get("pipelines", {})
    peak_key = "bfloat16" if cfg.dtype == "bfloat16" and "jax_bfloat16_gflops" in mm else "float32"
    jax_peak = mm.get(f"jax_{peak_key}_gflops")
    torch_peak = mm.get(f"torch_{peak_key}_gflops")
    s: dict[str, Any] = {"peak_dtype": peak_key}
    if tr.get("model_tflops_per_s") and jax_peak:
        s["mfu_ours"] = tr["model_tflops_per_s"] * 1e3 / jax_peak
    if tr.get("spec_peak_flops"):
        s["mfu_ours_vs_spec"] = tr["model_tflops_per_s"] * 1e12 / tr["spec_peak_flops"]
    if hf.get("model_tflops_per_s") and torch_peak:
        s["mfu_transformers_vs_torch_peak"] = hf["model_tflops_per_s"] * 1e3 / torch_peak
    s["train_ratio"] = _ratio(tr.get("tokens_per_s"), hf.get("tokens_per_s"))
    s["decode_ratio"] = _ratio(dec.get("tokens_per_s"), hfd.get("tokens_per_s"))
    for name in ("ul2", "prefix_lm"):
        if isinstance(pipe.get(name), dict):
            s[f"{name}_pipeline_ratio"] = _ratio(pipe[name]["tokens_per_s"], tr.get("tokens_per_s"))
    targets = TARGETS["gpu" if cfg.gpu else "cpu"]
    met = {}
    mfu_key = "mfu_ours_vs_spec" if cfg.gpu and "mfu_ours_vs_spec" in s else "mfu_ours"
    if mfu_key in s:
        met["mfu"] = s[mfu_key] >= targets["mfu"]
    for key in ("train_ratio", "decode_ratio"):
        if s.get(key) is not None:
            met[key] = s[key] >= targets[key]
    for name in ("ul2", "prefix_lm"):
        if s.get(f"{name}_pipeline_ratio") is not None:
            met[f"{name}_pipeline_ratio"] = s[f"{name}_pipeline_ratio"] >= targets["pipeline_ratio"]
    s["targets"] = targets
    s["targets_met"] = met
    return s


def _fmt(x: Any, spec: str = ",.0f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def format_table(report: dict) -> str:
    """The human-readable table of a report."""
    p, s, cfg = report["parts"], report["summary"], report["config"]
    mm, tr, hf = p.get("matmul", {}), p.get("train", {}), p.get("hf_train", {})
    dec, hfd, pipe = p.get("decode", {}), p.get("hf_decode", {}), p.get("pipelines", {})
    pct = lambda x: _fmt(None if x is None else 100 * x, ".1f") + ("%" if x is not None else "")  # noqa: E731
    xr = lambda x: _fmt(x, ".2f") + ("x" if x is not None else "")  # noqa: E731
    rows = [("measure", "ours (JAX)", "transformers", "ours/theirs", "target")]
    peak = s["peak_dtype"]
    rows.append((f"matmul {mm.get('n', '?')}^3 {peak} GFLOP/s", _fmt(mm.get(f"jax_{peak}_gflops"), ",.1f"),
                 _fmt(mm.get(f"torch_{peak}_gflops"), ",.1f"), "", ""))
    rows.append(("train step s", _fmt(tr.get("step_s"), ".3f"), _fmt(hf.get("step_s"), ".3f"), "", ""))
    rows.append(("train tokens/s", _fmt(tr.get("tokens_per_s")), _fmt(hf.get("tokens_per_s")),
                 xr(s.get("train_ratio")), f">= {s['targets']['train_ratio']}x"))
    rows.append(("train model TFLOP/s", _fmt(tr.get("model_tflops_per_s"), ".4f"),
                 _fmt(hf.get("model_tflops_per_s"), ".4f"), "", ""))
    rows.append(("MFU vs measured peak", pct(s.get("mfu_ours")), pct(s.get("mfu_transformers_vs_torch_peak")), "",
                 f">= {100 * s['targets']['mfu']:.0f}%"))
    if s.get("mfu_ours_vs_spec") is not None:
        rows.append(("MFU vs spec peak", pct(s["mfu_ours_vs_spec"]), "", "", ""))
    rows.append(("loss first -> last", f"{_fmt(tr.get('loss_first'), '.3f')} -> {_fmt(tr.get('loss_last'), '.3f')}",
                 f"{_fmt(hf.get('loss_first'), '.3f')} -> {_fmt(hf.get('loss_last'), '.3f')}", "", ""))
    rows.append(("greedy decode tokens/s", _fmt(dec.get("tokens_per_s")), _fmt(hfd.get("tokens_per_s")),
                 xr(s.get("decode_ratio")), f">= {s['targets']['decode_ratio']}x"))
    if hfd.get("token_agreement_with_ours") is not None:
        rows.append(("decode token agreement", "", pct(hfd["token_agreement_with_ours"]), "", ""))
    for name in ("ul2", "prefix_lm"):
        if isinstance(pipe.get(name), dict):
            rows.append((f"{name} pipeline tokens/s", _fmt(pipe[name]["tokens_per_s"]), "",
                         xr(s.get(f"{name}_pipeline_ratio")) + " of step",
                         f">= {s['targets']['pipeline_ratio']}x"))
    if "skipped" in pipe:
        rows.append(("pipelines", "skipped: " + pipe["skipped"][:40], "", "", ""))
    for name in PARTS:
        part = p.get(name, {})
        rss = part.get("peak_rss_mib")
        dev = part.get("device_peak_bytes")
        if rss is not None:
            extra = f", device {dev / 2**30:.1f} GiB" if dev else ""
            rows.append((f"peak memory: {name}", f"{rss:,.0f} MiB host{extra}", "", "", ""))
        if "error" in part:
            rows.append((f"{name} FAILED", part["error"].strip().splitlines()[-1][:60] if part["error"].strip() else "?",
                         "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m = report["machine"]
    head = (
        f"config {cfg['preset']} layers {cfg['num_layers'] or 'preset'} vocab {cfg['vocab_size'] or 'preset'}, batch "
        f"{cfg['batch']} x ({cfg['inputs_length']} in + {cfg['targets_length']} out), {cfg['optimizer']}, "
        f"{cfg['dtype']}/{cfg['param_dtype']}, scan={cfg['scan']} remat={cfg['remat']}; "
        f"{m['threads']} threads; load {m['load_start']} -> {m['load_end']}; "
        f"model FLOPs/step {_fmt(report.get('model_flops_per_step', 0) / 1e9, ',.1f')} G"
    )
    if tr.get("breakdown"):
        b = tr["breakdown"]
        head += "\nstep breakdown (s): " + ", ".join(f"{k} {v:.3f}" for k, v in b.items())
    prof = tr.get("profile") or {}
    if prof.get("by_kind_pct"):
        head += "\nprofile, % of op time by kind: " + ", ".join(f"{k} {v}" for k, v in prof["by_kind_pct"].items())
        head += "\nprofile, top sources: " + "; ".join(
            f"{k} {v}%" for k, v in list(prof["by_source_pct"].items())[:8])
    return head + "\n" + "\n".join(lines)


def _preset_args(args) -> BenchConfig:
    cfg = BenchConfig()
    if args.gpu:
        cfg = dataclasses.replace(
            cfg, preset="2B-2B", num_layers=None, vocab_size=None, inputs_length=512, targets_length=512,
            decode_length=128, dtype="bfloat16", param_dtype="float32", hf_dtype="bfloat16", optimizer="adafactor",
            remat="full", scan=True, matmul_size=8192, gpu=True, steps=10, pipeline_examples=4096,
        )
    if args.tiny:
        cfg = dataclasses.replace(
            cfg, preset="tiny-tiny", num_layers=None, vocab_size=None, batch=2, inputs_length=16,
            targets_length=16, decode_length=8, steps=2, warmup=1, matmul_size=128, pipeline_examples=64,
            threads=1,
        )
    for f in dataclasses.fields(BenchConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(cfg, f.name, value)
    return cfg


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--gpu", action="store_true", help="GPU defaults: 2B-2B, bf16, Adafactor, scan + full remat")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (seconds; the smoke test)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--out", default="bench.json", help="where the JSON report goes")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per part")
    parser.add_argument("--inprocess", action="store_true",
                        help="run the parts in this process (faster start; peak RSS not per part)")
    for f in dataclasses.fields(BenchConfig):
        if f.name in ("gpu",):
            continue
        if f.type in ("bool",):
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "str": str, "Optional[int]": int, "Optional[str]": str}[f.type]
            parser.add_argument(f"--{f.name}", type=kind, default=None)
    parser.add_argument("--_part", help=argparse.SUPPRESS)
    parser.add_argument("--_work", help=argparse.SUPPRESS)
    parser.add_argument("--_config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._part:  # child: one part
        cfg = BenchConfig(**json.loads(args._config))
        out = PART_FNS[args._part](cfg, args._work)
        with open(os.path.join(args._work, f"{args._part}.json"), "w") as f:
            json.dump(out, f)
        return 0

    cfg = _preset_args(args)
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(wanted) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {PARTS}")
    if ({"decode", "hf_decode", "hf_train"} & set(wanted)) and "export" not in wanted:
        wanted.append("export")  # they read the exported weights
    order = [p for p in PARTS if p in wanted]
    from adaptation import trainer

    report: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "model_flops_per_step": trainer.training_flops_per_step(
            cfg.model_config(), cfg.batch, cfg.inputs_length, cfg.targets_length),
        "flop_formula": __doc__.split("Model FLOPs per step")[1].split("\n\n")[0].strip(),
        "machine": {"threads": _threads(cfg), "cores": _cores()[: _threads(cfg)],
                    "load_start": round(os.getloadavg()[0], 2), "peak_rss_per_part": not args.inprocess},
        "parts": {},
    }
    with tempfile.TemporaryDirectory(prefix="adaptation-bench-") as work:
        for name in order:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            report["parts"][name] = run_part(name, cfg, work, args.timeout, args.inprocess)
            if "error" in report["parts"][name]:
                print(f"[bench] {name} failed: {report['parts'][name]['error']}", file=sys.stderr, flush=True)
    report["machine"]["load_end"] = round(os.getloadavg()[0], 2)
    report["summary"] = summarize(cfg, report["parts"])
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(format_table(report))
    print(f"[bench] wrote {args.out}", file=sys.stderr)
    return 1 if any("error" in v for v in report["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
