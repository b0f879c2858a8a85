"""Checkpoint conversion CLI: `python -m adaptation.convert` / `adaptation-convert`.

  adaptation-convert --input PATH [--input_decoder PATH] --output PATH --to {orbax,hf}
                     [--adapt balanced|unbalanced] [--[no-]merged_attention] [--[no-]tie_embeddings]
                     [--dtype bfloat16|float32] [--config PRESET] [--dry_run]

- `--input`: any checkpoint `adaptation.load_checkpoint` reads (HF Gemma 2 / Gemma 3 / T5Gemma /
  T5Gemma 2 directory, our model directory, a trainer run, an official Gemma Flax/Orbax checkpoint;
  `--config` names the preset for the last, whose window and soft-caps the shapes cannot tell).
- `--adapt balanced`: the decoder-only input becomes an encoder-decoder model, both stacks from it
  (or the decoder from `--input_decoder`), cross-attention copied from self-attention.
  `--adapt unbalanced`: encoder from `--input`, decoder from `--input_decoder` (required),
  cross-attention freshly initialized (the params listed as new).
- The style of the adapted model: T5Gemma 2 (`--merged_attention`: one merged attention per decoder
  layer initialized from the source self-attention, `--tie_embeddings`: one table for encoder,
  decoder and output head, and the encoder reads the sliding window as a width, as transformers'
  T5Gemma2 does) or T5Gemma (`--no-merged_attention --no-tie_embeddings`: cross-attention, separate
  tables). Default: T5Gemma 2 style when the decoder source has Gemma 3 blocks (QK-norm), T5Gemma
  style otherwise; `--tie_embeddings` defaults to `--merged_attention`. The choice is printed.
- `--to orbax`: our model directory (model_config.json + orbax params), read by `load_checkpoint`;
  `--to hf`: a Hugging Face directory (Gemma 2 or Gemma 3 (`Gemma3ForCausalLM`) for decoder-only
  models, T5Gemma for encoder-decoder models with cross-attention, T5Gemma 2
  (`T5Gemma2ForConditionalGeneration`, text path) for merged attention with tied embeddings, the
  T5Gemma encoder-only classifier for classifier params).
- `--dry_run`: prints the name/shape mapping from the configs alone (no tensor is read) and writes nothing.
Bad input prints one line `adaptation-convert: error: ...` and exits with status 2; outputs are
written into a temporary directory and renamed at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

import numpy as np

from adaptation.checkpoints.common import (
    DECODER_ONLY,
    ENCODER_DECODER,
    AnyConfig,
    CheckpointError,
    cast_tree,
    dtype_of,
    expected_shapes,
    flatten,
    kind_of,
)

PROG = "adaptation-convert"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="checkpoint to convert (the encoder source with --adapt)")
    p.add_argument("--input_decoder", help="decoder-only checkpoint the decoder comes from (with --adapt)")
    p.add_argument("--output", required=True, help="directory to write (must not exist)")
    p.add_argument("--to", required=True, choices=("orbax", "hf"), help="output format")
    p.add_argument("--adapt", choices=("balanced", "unbalanced"), help="decoder-only -> encoder-decoder")
    p.add_argument("--merged_attention", action=argparse.BooleanOptionalAction, default=None,
                   help="with --adapt: T5Gemma 2 merged attention (default: on for Gemma 3 block sources)")
    p.add_argument("--tie_embeddings", action=argparse.BooleanOptionalAction, default=None,
                   help="with --adapt: one embedding table for encoder, decoder and head (default: --merged_attention)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), help="cast the params (default: keep the stored dtype)")
    p.add_argument("--config", help="preset name for official Gemma Flax inputs (e.g. gemma2_2b)")
    p.add_argument("--dry_run", action="store_true", help="print the name/shape mapping; write nothing")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.input_decoder and not args.adapt:
        raise CheckpointError("--input_decoder is only used with --adapt.")
    for flag in ("merged_attention", "tie_embeddings"):
        if getattr(args, flag, None) is not None and not args.adapt:
            raise CheckpointError(f"--{flag} / --no-{flag} are only used with --adapt.")
    if args.adapt == "unbalanced" and not args.input_decoder:
        raise CheckpointError("--adapt unbalanced needs --input_decoder (the smaller decoder-only checkpoint).")
    for flag, path in (("--input", args.input), ("--input_decoder", args.input_decoder)):
        if path is not None and not os.path.isdir(path):
            raise CheckpointError(f"{flag} {path!r} is not an existing directory.")
    if not args.dry_run and os.path.exists(args.output):
        raise CheckpointError(f"--output {args.output!r} already exists; remove it or choose another path.")


def _require_decoder_only(config: AnyConfig, flag: str, path: str) -> None:
    if kind_of(config) != DECODER_ONLY:
        raise CheckpointError(f"--adapt needs decoder-only checkpoints; {flag} {path!r} is {kind_of(config)}.")


def adapt_style(args: argparse.Namespace, decoder_source) -> tuple[bool, bool]:
    """(merged_attention, tie_embeddings) of an adaptation: the flags, else T5Gemma 2 style for
    sources with Gemma 3 blocks (QK-norm) and T5Gemma style otherwise."""
    merged = getattr(args, "merged_attention", None)
    if merged is None:
        merged = bool(decoder_source.use_qk_norm)
    tied = getattr(args, "tie_embeddings", None)
    return merged, merged if tied is None else tied


def _adapt(args, enc, dec):
    """Runs `adaptation.adapt.adapt` on (config, params) sources; returns (config, params, new paths)."""
    from adaptation.adapt import adapt

    merged, tied = adapt_style(args, (dec or enc)[0])
    init = None if merged else ("copy" if args.adapt == "balanced" else "random")
    print(f"adapting: {'merged attention' if merged else 'cross-attention'}, "
          f"{'tied' if tied else 'separate'} embeddings ({'T5Gemma 2' if merged and tied else 'T5Gemma'} style)")
    adapted = adapt(enc, dec, cross_attention_init=init, merged_attention=merged, tie_all_embeddings=tied)
    config = adapted.config
    if merged:  # T5Gemma 2 encoders read the sliding window as a width (transformers' T5Gemma2).
        config = config.replace(encoder=config.encoder.replace(bidirectional_window="width"))
    return config, adapted.params, list(adapted.new_param_paths)


def _shape_stand_ins(config: AnyConfig, dtype: Any = np.float32) -> dict:
    """Zero-memory params of the right shapes (broadcast views) for dry runs."""
    from adaptation.checkpoints.common import unflatten

    zero = np.zeros((), dtype)
    return unflatten({k: np.broadcast_to(zero, s) for k, s in expected_shapes(config).items()})


def _hf_entries(config: AnyConfig):
    """The HF name map entries an export of this config would write."""
    from adaptation.checkpoints import hf_t5gemma, hf_t5gemma2

    if kind_of(config) == ENCODER_DECODER and config.decoder.merged_attention:
        hf_t5gemma2.config_to_hf(config)  # the errors of a config T5Gemma2 cannot express
        return hf_t5gemma2.T5GEMMA2_NAMES.entries(expected_shapes(config))
    if kind_of(config) == ENCODER_DECODER:
        untied = config.replace(tie_all_embeddings=False)  # exported as two equal tables
        return hf_t5gemma.T5GEMMA_NAMES.entries(expected_shapes(untied))
    return _decoder_family(config).names.entries(expected_shapes(config))


def _decoder_family(config):
    """The first HF decoder-only family whose config.json can express this config."""
    from adaptation.checkpoints import hf_gemma

    reasons = []
    for family in hf_gemma.FAMILIES.values():
        try:
            family.config_to_hf(config)
            return family
        except CheckpointError as e:
            reasons.append(f"{family.architecture}: {e}")
    raise CheckpointError("no Hugging Face decoder-only family can express this config (" + "; ".join(reasons) + ").")


def _dry_run(args) -> None:
    from adaptation.checkpoints.loader import detect_format, read_config

    enc_cfg = read_config(args.input, config=args.config)
    print(f"input: {args.input} ({detect_format(args.input)}, {kind_of(enc_cfg)})")
    new: list[str] = []
    if args.adapt:
        _require_decoder_only(enc_cfg, "--input", args.input)
        enc = (enc_cfg, _shape_stand_ins(enc_cfg))
        dec = None
        if args.input_decoder:
            dec_cfg = read_config(args.input_decoder)
            print(f"input_decoder: {args.input_decoder} ({detect_format(args.input_decoder)}, {kind_of(dec_cfg)})")
            _require_decoder_only(dec_cfg, "--input_decoder", args.input_decoder)
            dec = (dec_cfg, _shape_stand_ins(dec_cfg))
        config, params, new = _adapt(args, enc, dec)
        shapes = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
    else:
        config = enc_cfg
        shapes = expected_shapes(config)
        if kind_of(config) not in (DECODER_ONLY, ENCODER_DECODER) and args.to == "hf":
            raise CheckpointError("dry runs of classifier conversions are not supported; run without --dry_run.")
    dtype = args.dtype or "stored dtype"
    print(f"output: {args.output} (--to {args.to}, {kind_of(config)}, {dtype})")
    new_set = set(new)
    if args.to == "orbax":
        for name, shape in shapes.items():
            print(f"{name}  {shape}{'  [new]' if name in new_set else ''}")
    else:
        for e in _hf_entries(config):
            print(f"{e.theirs}  {e.their_shape}  <- {e.ours} {e.our_shape}{'  [new]' if e.ours in new_set else ''}")
    if new:
        print(f"{len(new)} freshly initialized params (train them first: cross-attention warm-up).")


def _write(args, config: AnyConfig, params: dict) -> None:
    from adaptation.checkpoints import hf_gemma, hf_t5gemma, hf_t5gemma2
    from adaptation.checkpoints.native import save_model

    if args.to == "orbax":
        save_model(args.output, config, params)
        return
    kind = kind_of(config)
    if kind == ENCODER_DECODER and config.decoder.merged_attention:
        hf_t5gemma2.export_t5gemma2(args.output, config, params)
    elif kind == ENCODER_DECODER:
        hf_t5gemma.export_t5gemma(args.output, config, params)
    elif kind == DECODER_ONLY:
        hf_gemma.export_decoder(args.output, config, params, _decoder_family(config))
    elif "head" in params:
        hf_t5gemma.export_t5gemma_classifier(args.output, config, params)
    else:
        raise CheckpointError("an encoder-only model without a classifier head has no Hugging Face format; use --to orbax.")


def convert(args: argparse.Namespace) -> None:
    """Runs one conversion (see the module docstring)."""
    from adaptation.checkpoints.loader import read_checkpoint

    _check_args(args)
    if args.dry_run:
        _dry_run(args)
        return
    config, params = read_checkpoint(args.input, config=args.config)
    if args.adapt:
        _require_decoder_only(config, "--input", args.input)
        dec = None
        if args.input_decoder:
            dec = read_checkpoint(args.input_decoder)
            _require_decoder_only(dec[0], "--input_decoder", args.input_decoder)
        config, params, new = _adapt(args, (config, params), dec)
        if new:
            print(f"{len(new)} freshly initialized params, e.g. {new[0]}")
    if args.dtype:
        params = cast_tree(params, args.dtype)
        config = _set_param_dtype(config, dtype_of(args.dtype).name)
    _write(args, config, params)
    print(f"wrote {args.output} ({args.to}, {kind_of(config)})")


def _set_param_dtype(config: AnyConfig, name: str) -> AnyConfig:
    from adaptation.models.config import EncoderDecoderConfig

    if isinstance(config, EncoderDecoderConfig):
        return config.replace(encoder=config.encoder.replace(param_dtype=name), decoder=config.decoder.replace(param_dtype=name))
    return config.replace(param_dtype=name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the exit status (2 on bad input)."""
    args = _parser().parse_args(argv)
    try:
        convert(args)
    except (CheckpointError, ValueError, KeyError, OSError) as e:
        message = str(e).strip().replace("\n", " ") or type(e).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
