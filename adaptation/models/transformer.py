"""Transformer stacks and the models built from them.

- `Stack`: blocks + final norm over input embeddings (the shared core of every model).
- `DecoderOnlyLM`: Gemma decoder-only language model; `apply(params, tokens) -> logits`.
- `EncoderOnly`: bidirectional stack; `apply(params, tokens) -> final-norm hidden states`.
- `EncoderDecoder`: T5Gemma / T5Gemma 2; `apply(params, encoder_tokens, decoder_tokens) -> logits`.

Parameter trees:
  DecoderOnlyLM / EncoderOnly: {embedder: {embedding}, decoder|encoder: {layers_i | layers, final_norm}}
  EncoderDecoder: {encoder_embedder, decoder_embedder | embedder, encoder: {...}, decoder: {...}}
A block's params: pre_attention_norm, attn{q,k,v,o[,query_norm,key_norm]}, post_attention_norm,
[pre_cross_attention_norm, cross_attn{q,k,v,o}, post_cross_attention_norm], pre_ffw_norm,
mlp{gate,up,down}, post_ffw_norm. Scanned stacks hold one `layers` subtree stacked on axis 0.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from adaptation.models import axes, masks
from adaptation.models.block import block_class
from adaptation.models.config import AttentionKind, EncoderDecoderConfig, TransformerConfig
from adaptation.models.layers import Embedder, RMSNorm, rope_sin_cos, soft_cap

Array = jnp.ndarray


class Stack(nn.Module):
    """Blocks and a final RMSNorm over [B, T, D] input embeddings."""

    config: TransformerConfig

    @nn.compact
    def __call__(
        self,
        x: Array,
        segment_ids: Array,
        positions: Array,
        *,
        encoded: Optional[Array] = None,
        encoder_segment_ids: Optional[Array] = None,
        cache: Optional[dict] = None,
        decode_index: Optional[Array] = None,
        deterministic: bool = True,
    ) -> tuple[Array, Optional[dict]]:
        """Runs the stack.

        Args:
          x: [B, T, D] scaled input embeddings.
          segment_ids, positions: [B, T] (see `models.masks`).
          encoded, encoder_segment_ids: encoder outputs [B, S, E] and their segment ids, for
            decoders with cross- or merged attention.
          cache: per-layer caches (see `Block`) stacked on a leading layer axis, or None; unscanned
            stacks also take a tuple with one cache per layer (returned as a tuple: decoding loops
            carry it so that no step slices or restacks the whole cache).
          decode_index: where the T new tokens start in the self-attention cache; None when the
            cache holds no self-attention keys/values.
          deterministic: disables dropout.

        Returns:
          ([B, T, D] final-norm hidden states, the updated cache or None).
        """
        cfg = self.config
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = nn.with_logical_constraint(x.astype(cfg.compute_dtype), axes.ACT_EMBED)
        shared = self._shared_inputs(segment_ids, positions, encoded, encoder_segment_ids, cache, decode_index)

        block = block_class(cfg)
        kinds = cfg.layer_kinds
        if cfg.scan_layers:
            is_local = jnp.asarray([k == AttentionKind.LOCAL for k in kinds])
            scanned = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: axes.LAYERS},
            )
            x, new_cache = scanned(cfg, deterministic, name="layers")(x, (is_local, cache), shared)
        else:
            per_layer = isinstance(cache, tuple)
            layer_caches = []
            for i, kind in enumerate(kinds):
                if cache is None:
                    layer_cache = None
                elif per_layer:
                    layer_cache = cache[i]
                else:
                    layer_cache = jax.tree.map(lambda c, i=i: c[i], cache)
                x, layer_cache = block(cfg, deterministic, kind, name=f"layers_{i}")(
                    x, (None, layer_cache), shared
                )
                layer_caches.append(layer_cache)
            if cache is None:
                new_cache = None
            elif per_layer:
                new_cache = tuple(layer_caches)
            else:
                new_cache = jax.tree.map(lambda *c: jnp.stack(c), *layer_caches)
        x = RMSNorm(cfg.norm_eps, cfg.weight_dtype, name="final_norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        return x, new_cache

    def _shared_inputs(self, segment_ids, positions, encoded, encoder_segment_ids, cache, decode_index) -> dict:
        """Masks, RoPE tables and encoder outputs that every layer reads."""
        cfg = self.config
        if decode_index is not None:
            # Keys are the cache slots; those before decode_index + T are filled.
            batch, length = segment_ids.shape
            max_length = (cache[0] if isinstance(cache, tuple) else cache)["k"].shape[-2]  # [(L,) B, K, S_max, H]
            key_positions = jnp.broadcast_to(jnp.arange(max_length, dtype=jnp.int32), (batch, max_length))
            key_segments = (key_positions < decode_index + length).astype(jnp.int32)
        else:
            key_positions, key_segments = positions, segment_ids
        kinds = set(cfg.layer_kinds)

        def mask(window):
            return masks.attention_mask(
                positions, segment_ids, key_positions, key_segments, causal=cfg.causal, window=window,
                bidirectional_window=cfg.bidirectional_window,
            )

        shared = {"mask_global": mask(None) if AttentionKind.GLOBAL in kinds else None}
        has_local = AttentionKind.LOCAL in kinds and cfg.sliding_window is not None
        shared["mask_local"] = mask(cfg.sliding_window) if has_local else shared["mask_global"]
        if shared["mask_global"] is None:
            shared["mask_global"] = shared["mask_local"]
        shared["rope_global"] = rope_sin_cos(positions, cfg.head_dim, cfg.rope_base_global, cfg.rope_scale_global)
        shared["rope_local"] = rope_sin_cos(positions, cfg.head_dim, cfg.rope_base_local)
        if cfg.cross_attention or cfg.merged_attention:
            if encoded is None:
                raise ValueError("a decoder with cross- or merged attention needs the encoder outputs.")
            shared["encoded"] = encoded
            shared["cross_mask"] = masks.cross_attention_mask(segment_ids, encoder_segment_ids)
        if decode_index is not None:
            shared["decode_index"] = decode_index
        return shared


def segments_and_positions(tokens: Array, segment_ids: Optional[Array], positions: Optional[Array]):
    """Segment ids from the pad id when not given; positions counted inside segments when not given."""
    if segment_ids is None:
        segment_ids = masks.segment_ids_from_tokens(tokens)
    if positions is None:
        positions = masks.positions_from_segments(segment_ids)
    return segment_ids, positions


def _embedder(cfg: TransformerConfig, name: str) -> Embedder:
    return Embedder(cfg.vocab_size, cfg.embed_dim, cfg.compute_dtype, cfg.weight_dtype, name=name)


def output_logits(embedder: Embedder, hidden: Array, cap: Optional[float]) -> Array:
    """Tied output head with the final-logit soft-cap; float32 [B, T, V]."""
    logits = soft_cap(embedder.attend(hidden), cap)
    return nn.with_logical_constraint(logits, axes.ACT_VOCAB)


class DecoderOnlyLM(nn.Module):
    """Gemma decoder-only LM: `apply({'params': p}, decoder_input_tokens) -> [B, T, V] logits`."""

    config: TransformerConfig

    def setup(self):
        self.embedder = _embedder(self.config, "embedder")
        self.decoder = Stack(self.config)

    def __call__(
        self,
        decoder_input_tokens: Array,
        decoder_segment_ids: Optional[Array] = None,
        decoder_positions: Optional[Array] = None,
        enable_dropout: bool = False,
        return_hidden: bool = False,
    ) -> Array:
        """[B, T, V] logits; with `return_hidden`, (final-norm hidden states [B, T, D], the head's
        table [V, D]) instead, for losses that fuse the head (`objectives.fused_xent`)."""
        segments, positions = segments_and_positions(decoder_input_tokens, decoder_segment_ids, decoder_positions)
        x = self.embedder.encode(decoder_input_tokens)
        hidden, _ = self.decoder(x, segments, positions, deterministic=not enable_dropout)
        if return_hidden:
            return hidden, self.embedder.embedding
        return output_logits(self.embedder, hidden, self.config.final_logit_soft_cap)


class EncoderOnly(nn.Module):
    """Bidirectional stack: `apply({'params': p}, tokens) -> [B, T, D] final-norm hidden states`."""

    config: TransformerConfig

    def setup(self):
        self.embedder = _embedder(self.config, "embedder")
        self.encoder = Stack(self.config)

    def __call__(
        self,
        tokens: Array,
        segment_ids: Optional[Array] = None,
        positions: Optional[Array] = None,
        enable_dropout: bool = False,
    ) -> Array:
        segments, positions = segments_and_positions(tokens, segment_ids, positions)
        hidden, _ = self.encoder(self.embedder.encode(tokens), segments, positions, deterministic=not enable_dropout)
        return hidden


class EncoderDecoder(nn.Module):
    """T5Gemma-style encoder-decoder.

    `apply({'params': p}, encoder_input_tokens, decoder_input_tokens) -> [B, T, V]` logits; `encode`
    and `decode` are the two halves, `decode` with a cache for incremental decoding.
    """

    config: EncoderDecoderConfig

    def setup(self):
        cfg = self.config
        if cfg.tie_all_embeddings:
            self.embedder = _embedder(cfg.decoder, "embedder")
            self.encoder_embedder = self.decoder_embedder = self.embedder
        else:
            self.encoder_embedder = _embedder(cfg.encoder, "encoder_embedder")
            self.decoder_embedder = _embedder(cfg.decoder, "decoder_embedder")
        self.encoder = Stack(cfg.encoder)
        self.decoder = Stack(cfg.decoder)

    def encode(
        self,
        encoder_input_tokens: Array,
        encoder_segment_ids: Optional[Array] = None,
        encoder_positions: Optional[Array] = None,
        enable_dropout: bool = False,
        encoder_input_embeddings: Optional[Array] = None,
    ) -> Array:
        """[B, S] ids -> [B, S, E] encoder outputs (after the final norm).

        `encoder_input_embeddings` ([B, S, E], already scaled) replaces the token embeddings where
        given, so that another tower (e.g. vision) can feed the encoder; the tokens still define
        padding.
        """
        segments, positions = segments_and_positions(encoder_input_tokens, encoder_segment_ids, encoder_positions)
        if encoder_input_embeddings is None:
            x = self.encoder_embedder.encode(encoder_input_tokens)
        else:
            x = encoder_input_embeddings
        hidden, _ = self.encoder(x, segments, positions, deterministic=not enable_dropout)
        return hidden

    def decode(
        self,
        encoded: Array,
        encoder_segment_ids: Array,
        decoder_input_tokens: Array,
        decoder_segment_ids: Optional[Array] = None,
        decoder_positions: Optional[Array] = None,
        cache: Optional[dict] = None,
        decode_index: Optional[Array] = None,
        enable_dropout: bool = False,
        return_hidden: bool = False,
    ):
        """Decoder logits [B, T, V]; with a `cache`, returns (logits, new_cache); with `return_hidden`
        (no cache), (final-norm hidden states [B, T, D], the head's table [V, D]).

        Args:
          encoded, encoder_segment_ids: outputs of `encode` and the encoder segment ids.
          decoder_input_tokens: [B, T] (targets shifted right, starting with bos).
          cache: per-layer caches stacked on a leading layer axis (see `decoding.init_cache`).
          decode_index: position of the first of the T tokens inside the cache.
        """
        if decoder_segment_ids is None and decode_index is not None:
            decoder_segment_ids = jnp.ones_like(decoder_input_tokens, dtype=jnp.int32)
        if decoder_positions is None and decode_index is not None:
            length = decoder_input_tokens.shape[1]
            decoder_positions = decode_index + jnp.arange(length, dtype=jnp.int32)[None, :]
            decoder_positions = jnp.broadcast_to(decoder_positions, decoder_input_tokens.shape)
        segments, positions = segments_and_positions(decoder_input_tokens, decoder_segment_ids, decoder_positions)
        x = self.decoder_embedder.encode(decoder_input_tokens)
        hidden, new_cache = self.decoder(
            x,
            segments,
            positions,
            encoded=encoded,
            encoder_segment_ids=encoder_segment_ids,
            cache=cache,
            decode_index=decode_index,
            deterministic=not enable_dropout,
        )
        if return_hidden and cache is None:
            return hidden, self.decoder_embedder.embedding
        logits = output_logits(self.decoder_embedder, hidden, self.config.decoder.final_logit_soft_cap)
        return logits if cache is None else (logits, new_cache)

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        encoder_segment_ids: Optional[Array] = None,
        decoder_segment_ids: Optional[Array] = None,
        encoder_positions: Optional[Array] = None,
        decoder_positions: Optional[Array] = None,
        enable_dropout: bool = False,
        return_hidden: bool = False,
    ) -> Array:
        if encoder_segment_ids is None:
            encoder_segment_ids = masks.segment_ids_from_tokens(encoder_input_tokens)
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout)
        return self.decode(
            encoded,
            encoder_segment_ids,
            decoder_input_tokens,
            decoder_segment_ids,
            decoder_positions,
            enable_dropout=enable_dropout,
            return_hidden=return_hidden,
        )
