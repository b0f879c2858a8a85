"""The one transformer block, configured for every family and role.

Sub-layers, each `x + dropout(post_norm(sublayer(pre_norm(x))))`:
  1. self-attention (causal or bidirectional, global or sliding; merged with the encoder outputs
     when `config.merged_attention`);
  2. cross-attention to the encoder outputs (when `config.cross_attention`; global, no RoPE);
  3. GeGLU feed-forward.

The block is called as `block(x, (is_local, cache), shared)` so that `nn.scan` can stack it:
`is_local` and `cache` vary per layer, `shared` (masks, RoPE tables, encoder outputs) is broadcast.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from adaptation.models import axes
from adaptation.models.config import AttentionKind, TransformerConfig
from adaptation.models.layers import Attention, FeedForward, RMSNorm

Array = jnp.ndarray

# Rematerialization policies by name (`TransformerConfig.remat_policy`); 'none' disables remat.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _pick(is_local: Any, local: Any, global_: Any) -> Any:
    """Selects the local or global variant: statically for a Python bool, with `where` when traced."""
    if isinstance(is_local, bool):
        return local if is_local else global_
    return jax.tree.map(lambda a, b: jnp.where(is_local, a, b), local, global_)


class Block(nn.Module):
    """One transformer layer.

    Attributes:
      config: the stack's config.
      deterministic: disables dropout.
      kind: the layer's attention kind when known statically (unscanned stacks); None when it
        comes per layer through `is_local` (scanned stacks).
    """

    config: TransformerConfig
    deterministic: bool = True
    kind: Optional[AttentionKind] = None

    def _norm(self, name: str) -> RMSNorm:
        return RMSNorm(self.config.norm_eps, self.config.weight_dtype, name=name)

    def _residual(self, x: Array, h: Array, post_norm: Optional[str]) -> Array:
        if post_norm is not None:
            h = self._norm(post_norm)(h)
        h = nn.Dropout(self.config.dropout_rate)(h, deterministic=self.deterministic)
        return nn.with_logical_constraint(x + h, axes.ACT_EMBED)

    @nn.compact
    def __call__(self, x: Array, layer_inputs: tuple[Any, Optional[dict]], shared: dict):
        """Runs the layer.

        Args:
          x: [B, T, D] activations.
          layer_inputs: (is_local, cache). `is_local` is used when `kind` is None. `cache` is None
            (no caching) or a dict with `k`, `v` ([B, K, S_max, H] self-attention cache, written at
            `shared['decode_index']`) and/or `enc_k`, `enc_v` ([B, K, S_enc, H] encoder keys/values).
          shared: `rope_local`, `rope_global` ((sin, cos) [B, T, H]), `mask_local`, `mask_global`
            ([B, T, S] bool), and for decoders `encoded` ([B, S_enc, E]) and `cross_mask`
            ([B, T, S_enc]); `decode_index` (scalar) when decoding with a cache.

        Returns:
          (x, new_cache); new_cache is None when `cache` is None.
        """
        cfg = self.config
        is_local, cache = layer_inputs
        if self.kind is not None:
            is_local = self.kind == AttentionKind.LOCAL
        rope = _pick(is_local, shared["rope_local"], shared["rope_global"])
        mask = _pick(is_local, shared["mask_local"], shared["mask_global"])
        new_cache = None if cache is None else {}

        # 1. Self-attention (merged with the encoder outputs in T5Gemma 2 decoders).
        attn = Attention(cfg, name="attn")
        h = self._norm("pre_attention_norm")(x)
        q = attn.queries(h, rope)
        k, v = attn.keys_values(h, rope)  # [B, K, T, H], the cache's layout
        if cache is not None and "k" in cache:
            index = shared["decode_index"]
            k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), index, axis=2)
            v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), index, axis=2)
            new_cache.update(k=k, v=v)
        if cfg.merged_attention:
            enc_k, enc_v = self._encoder_kv(attn, cache, new_cache, shared)
            k = jnp.concatenate([k, enc_k.astype(k.dtype)], axis=2)
            v = jnp.concatenate([v, enc_v.astype(v.dtype)], axis=2)
            mask = jnp.concatenate([mask, shared["cross_mask"]], axis=-1)
        h = attn.attend(q, k, v, mask, deterministic=self.deterministic)
        x = self._residual(x, h, "post_attention_norm" if cfg.use_post_attn_norm else None)

        # 2. Cross-attention (T5Gemma decoders).
        if cfg.cross_attention:
            cross = Attention(cfg, kv_dim=cfg.kv_input_dim, name="cross_attn")
            h = self._norm("pre_cross_attention_norm")(x)
            enc_k, enc_v = self._encoder_kv(cross, cache, new_cache, shared)
            h = cross.attend(cross.queries(h, None), enc_k, enc_v, shared["cross_mask"], deterministic=self.deterministic)
            x = self._residual(x, h, "post_cross_attention_norm" if cfg.use_post_attn_norm else None)

        # 3. Feed-forward.
        h = FeedForward(cfg, name="mlp")(self._norm("pre_ffw_norm")(x))
        x = self._residual(x, h, "post_ffw_norm" if cfg.use_post_ffw_norm else None)
        return x, new_cache

    @staticmethod
    def _encoder_kv(attn: Attention, cache, new_cache, shared) -> tuple[Array, Array]:
        """Encoder keys/values [B, K, S, H]: from the cache when present, else projected (and cached)."""
        if cache is not None and "enc_k" in cache:
            enc_k, enc_v = cache["enc_k"], cache["enc_v"]
        else:
            enc_k, enc_v = attn.keys_values(shared["encoded"], None)
        if new_cache is not None:
            new_cache.update(enc_k=enc_k, enc_v=enc_v)
        return enc_k, enc_v


def block_class(config: TransformerConfig) -> type[Block]:
    """`Block`, wrapped in `nn.remat` when the config asks for rematerialization."""
    if config.remat_policy == "none":
        return Block
    if config.remat_policy not in REMAT_POLICIES:
        raise ValueError(
            f"unknown remat_policy {config.remat_policy!r}; choose one of "
            f"{['none', *REMAT_POLICIES]}."
        )
    return nn.remat(Block, policy=REMAT_POLICIES[config.remat_policy], prevent_cse=not config.scan_layers)
