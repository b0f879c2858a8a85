"""Models: one configurable transformer block, the stacks and models built from it, presets."""

from adaptation.models import layout, masks
from adaptation.models.config import AttentionKind, EncoderDecoderConfig, TransformerConfig, encoder_decoder_from
from adaptation.models.presets import decoder_only, encoder_decoder
from adaptation.models.transformer import DecoderOnlyLM, EncoderDecoder, EncoderOnly, Stack

__all__ = [
    "AttentionKind",
    "DecoderOnlyLM",
    "EncoderDecoder",
    "EncoderDecoderConfig",
    "EncoderOnly",
    "Stack",
    "TransformerConfig",
    "decoder_only",
    "encoder_decoder",
    "encoder_decoder_from",
    "layout",
    "masks",
]
