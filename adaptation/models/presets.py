"""Size presets: decoder-only sources and the encoder-decoder pairs built from them.

Presets are data. `decoder_only(name)` returns a `TransformerConfig`; `encoder_decoder(name)`
returns an `EncoderDecoderConfig` for names like "2B-2B" or "9B-2B" (encoder from the first source,
decoder from the second). Sizes: T5Gemma paper (arXiv 2504.06225) Table 1, Gemma 2 and Gemma 3
model cards; T5-sized S/B/L/XL/ML use the Gemma 2 block (local/global, soft-caps).
"""

from __future__ import annotations

from typing import Callable

from adaptation.models.config import (
    AttentionKind,
    EncoderDecoderConfig,
    TransformerConfig,
    encoder_decoder_from,
)

GEMMA2_VOCAB = 256_000
GEMMA3_VOCAB = 262_144
_L, _G = AttentionKind.LOCAL, AttentionKind.GLOBAL
GEMMA3_PATTERN = (_L, _L, _L, _L, _L, _G)


def _gemma2(layers, dim, ffn, heads, kv, head_dim, **kw) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=kw.pop("vocab_size", GEMMA2_VOCAB),
        num_layers=layers,
        embed_dim=dim,
        hidden_dim=ffn,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        query_pre_attn_scalar=kw.pop("query_pre_attn_scalar", head_dim),
        **kw,
    )


def _gemma3(layers, dim, ffn, heads, kv, head_dim, window, **kw) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=kw.pop("vocab_size", GEMMA3_VOCAB),
        num_layers=layers,
        embed_dim=dim,
        hidden_dim=ffn,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        query_pre_attn_scalar=kw.pop("query_pre_attn_scalar", head_dim),
        attn_logits_soft_cap=None,
        final_logit_soft_cap=None,
        sliding_window=window,
        attention_pattern=GEMMA3_PATTERN,
        rope_base_local=10_000.0,
        rope_base_global=1_000_000.0,
        use_qk_norm=True,
        **kw,
    )


DECODER_ONLY: dict[str, Callable[[], TransformerConfig]] = {
    # Gemma 2 (layers, d_model, ffn, heads, kv heads, head_dim).
    "gemma2_2b": lambda: _gemma2(26, 2304, 9216, 8, 4, 256),
    "gemma2_9b": lambda: _gemma2(42, 3584, 14336, 16, 8, 256),
    "gemma2_27b": lambda: _gemma2(46, 4608, 36864, 32, 16, 128, query_pre_attn_scalar=4608 // 32),
    # T5-sized decoder-only models of the T5Gemma paper.
    "s": lambda: _gemma2(8, 512, 1024, 8, 8, 64),
    "b": lambda: _gemma2(12, 768, 2048, 12, 12, 64),
    "l": lambda: _gemma2(24, 1024, 2816, 16, 16, 64),
    "ml": lambda: _gemma2(26, 1152, 6912, 4, 4, 256),
    "xl": lambda: _gemma2(24, 2048, 5120, 32, 32, 64),
    # Gemma 3 text models.
    "gemma3_270m": lambda: _gemma3(18, 640, 2048, 4, 1, 256, 512),
    "gemma3_1b": lambda: _gemma3(26, 1152, 6912, 4, 1, 256, 512),
    "gemma3_4b": lambda: _gemma3(34, 2560, 10240, 8, 4, 256, 1024, rope_scale_global=8.0),
    "gemma3_12b": lambda: _gemma3(48, 3840, 15360, 16, 8, 256, 1024, rope_scale_global=8.0),
    "gemma3_27b": lambda: _gemma3(
        62, 5376, 21504, 32, 16, 128, 1024, rope_scale_global=8.0, query_pre_attn_scalar=5376 // 32
    ),
    # Tiny configs for tests and the demo.
    "tiny": lambda: _gemma2(2, 64, 128, 4, 2, 16, vocab_size=512, sliding_window=8),
    "tiny_gemma3": lambda: _gemma3(7, 64, 128, 4, 2, 16, 8, vocab_size=512),
}

# Encoder-decoder pairs: encoder source, decoder source.
ENCODER_DECODER: dict[str, tuple[str, str]] = {
    "2B-2B": ("gemma2_2b", "gemma2_2b"),
    "9B-9B": ("gemma2_9b", "gemma2_9b"),
    "9B-2B": ("gemma2_9b", "gemma2_2b"),
    "S-S": ("s", "s"),
    "B-B": ("b", "b"),
    "L-L": ("l", "l"),
    "ML-ML": ("ml", "ml"),
    "XL-XL": ("xl", "xl"),
    "tiny-tiny": ("tiny", "tiny"),
    # T5Gemma 2 (merged attention, tied embeddings).
    "270M-270M": ("gemma3_270m", "gemma3_270m"),
    "1B-1B": ("gemma3_1b", "gemma3_1b"),
    "4B-4B": ("gemma3_4b", "gemma3_4b"),
    "tiny_gemma3-tiny_gemma3": ("tiny_gemma3", "tiny_gemma3"),
}
T5GEMMA2_PAIRS = frozenset({"270M-270M", "1B-1B", "4B-4B", "tiny_gemma3-tiny_gemma3"})


def decoder_only(name: str, **overrides) -> TransformerConfig:
    """A decoder-only preset by name, with optional field overrides."""
    if name not in DECODER_ONLY:
        raise KeyError(f"unknown decoder-only preset {name!r}; known: {sorted(DECODER_ONLY)}.")
    return DECODER_ONLY[name]().replace(**overrides)


def encoder_decoder(name: str, **overrides) -> EncoderDecoderConfig:
    """An encoder-decoder preset by name ("2B-2B", "9B-2B", ...); overrides apply to both stacks."""
    if name not in ENCODER_DECODER:
        raise KeyError(f"unknown encoder-decoder preset {name!r}; known: {sorted(ENCODER_DECODER)}.")
    enc, dec = ENCODER_DECODER[name]
    t5gemma2 = name in T5GEMMA2_PAIRS
    config = encoder_decoder_from(
        decoder_only(enc, **overrides),
        decoder_only(dec, **overrides),
        merged_attention=t5gemma2,
        tie_all_embeddings=t5gemma2,
    )
    if t5gemma2:  # T5Gemma 2 encoders read the sliding window as a width (transformers' T5Gemma2).
        config = config.replace(encoder=config.encoder.replace(bidirectional_window="width"))
    return config
