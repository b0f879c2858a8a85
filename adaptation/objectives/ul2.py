"""UL2 mixture of denoisers (Tay et al. 2022; T5Gemma 2) over span corruption.

A `Denoiser` is (mean span, corruption rate, optional fixed number of spans, prefix-LM style, mode
token, weight). Every example draws its denoiser from the weights (deterministically, from the same
per-example key as its corruption, see `span_corruption`), and the whole batch is corrupted in one
vectorized pass with per-row parameters.

- Span denoisers: `span_corruption.corrupt_batch` with the row's rate and mean span (or fixed spans).
- Prefix-LM denoisers: the last round(L * corruption_rate) tokens become the targets, the rest the
  inputs; no sentinels (T5Gemma 2: 75% of the sequence as target).
- Mode tokens (original UL2 `[NLU]`, `[NLG]`, `[S2S]`) are prepended to the inputs.

Defaults: `T5GEMMA2_DENOISERS`, (3, 0.15), (12, 0.5), (32, 0.15), (32, 0.5) and prefix-LM with 75%
target, weights 1:1:1:1:4, no mode tokens. `original_ul2_denoisers(nlu, nlg, s2s)`: the seven
denoisers of the UL2 paper, R = (3, 0.15), (8, 0.15) with [NLU]; X = (3, 0.5), (8, 0.5), (64, 0.15),
(64, 0.5) with [NLG]; S = prefix-LM with 25% target and [S2S]; weights 1 each by default.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import tensorflow as tf

from adaptation.objectives import span_corruption


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """One denoiser of a mixture; validated at construction."""

    mean_span: float = 3.0  # mean noise span length in tokens (ignored by prefix-LM denoisers)
    corruption_rate: float = 0.15  # fraction of the tokens that become targets, in (0, 1)
    num_spans: Optional[int] = None  # fixed number of spans instead of rate / mean_span
    prefix_lm: bool = False  # split: the last corruption_rate of the tokens are the targets
    mode_token: Optional[int] = None  # id prepended to the inputs ([NLU] / [NLG] / [S2S])
    weight: float = 1.0  # relative sampling weight, >= 0

    def __post_init__(self):
        if not 0.0 < self.corruption_rate < 1.0:
            raise ValueError(f"{self}: corruption_rate must be in (0, 1), got {self.corruption_rate}")
        if not self.prefix_lm and not self.mean_span > 0:
            raise ValueError(f"{self}: mean_span must be > 0, got {self.mean_span}")
        if self.num_spans is not None and self.num_spans < 1:
            raise ValueError(f"{self}: num_spans must be >= 1 or None, got {self.num_spans}")
        if not self.weight >= 0:
            raise ValueError(f"{self}: weight must be >= 0, got {self.weight}")
        if self.mode_token is not None and self.mode_token < 0:
            raise ValueError(f"{self}: mode_token must be a token id >= 0, got {self.mode_token}")


def validate_denoisers(denoisers: Sequence[Denoiser]) -> tuple[Denoiser, ...]:
    """Checks a mixture: non-empty, all `Denoiser`s, weights summing to > 0. Returns it as a tuple."""
    denoisers = tuple(denoisers)
    if not denoisers:
        raise ValueError("the denoiser mixture is empty; configure at least one Denoiser")
    for d in denoisers:
        if not isinstance(d, Denoiser):
            raise TypeError(f"mixture entries must be Denoiser, got {type(d).__name__}: {d!r}")
    if not sum(d.weight for d in denoisers) > 0:
        raise ValueError(f"the denoiser weights sum to {sum(d.weight for d in denoisers)}; they must sum to > 0")
    return denoisers


T5GEMMA2_DENOISERS = (
    Denoiser(mean_span=3, corruption_rate=0.15),
    Denoiser(mean_span=12, corruption_rate=0.5),
    Denoiser(mean_span=32, corruption_rate=0.15),
    Denoiser(mean_span=32, corruption_rate=0.5),
    Denoiser(corruption_rate=0.75, prefix_lm=True, weight=4.0),
)


def t5gemma2_denoisers() -> tuple[Denoiser, ...]:
    """The T5Gemma 2 mixture (the default)."""
    return T5GEMMA2_DENOISERS


def original_ul2_denoisers(
    nlu_token: int, nlg_token: int, s2s_token: int, weights: Sequence[float] = (1, 1, 1, 1, 1, 1, 1)
) -> tuple[Denoiser, ...]:
    """The seven UL2 denoisers with mode tokens (ids: e.g. `vocabularies.mode_token_ids(vocab)`)."""
    specs = [
        (3, 0.15, nlu_token),
        (8, 0.15, nlu_token),
        (3, 0.5, nlg_token),
        (8, 0.5, nlg_token),
        (64, 0.15, nlg_token),
        (64, 0.5, nlg_token),
    ]
    if len(weights) != 7:
        raise ValueError(f"original_ul2_denoisers takes 7 weights (R, R, X, X, X, X, S), got {len(weights)}")
    denoisers = [Denoiser(m, r, mode_token=t, weight=w) for (m, r, t), w in zip(specs, weights)]
    denoisers.append(Denoiser(corruption_rate=0.25, prefix_lm=True, mode_token=s2s_token, weight=weights[6]))
    return validate_denoisers(denoisers)


def max_spans(denoisers: Sequence[Denoiser], max_length: int) -> int:
    """Sentinels needed by the mixture for sequences of up to `max_length` tokens."""
    return max(
        1 if d.prefix_lm else span_corruption.max_num_spans(max_length, d.corruption_rate, d.mean_span, d.num_spans)
        for d in denoisers
    )


def sample_denoisers(keys: tf.Tensor, denoisers: Sequence[Denoiser]) -> tf.Tensor:
    """Index of each row's denoiser ([B] int32), drawn from the weights with the row keys."""
    weights = [float(d.weight) for d in denoisers]
    total = sum(weights)
    cumulative, acc = [], 0.0
    for w in weights[:-1]:
        acc += w / total
        cumulative.append(acc)
    u = span_corruption.uniform(keys, 4)
    index = tf.searchsorted(tf.constant(cumulative, tf.float32), u, side="right")
    # Never pick a zero-weight denoiser through float rounding at the boundaries.
    return tf.cast(tf.minimum(index, len(denoisers) - 1), tf.int32)


def ul2_denoise(
    dataset: tf.data.Dataset,
    denoisers: Sequence[Denoiser] = T5GEMMA2_DENOISERS,
    *,
    seed: int,
    sentinel_ids: Sequence[int],
    max_length: int,
    eos_id: Optional[int] = 1,
    feature: str = "targets",
    batch_size: int = 128,
    with_denoiser_id: bool = False,
) -> tf.data.Dataset:
    """Maps `{feature: tokens}` (2..max_length tokens) to `{"inputs", "targets"}` with the mixture.

    `with_denoiser_id` adds `"denoiser"` (the drawn index), for statistics.
    """
    denoisers = validate_denoisers(denoisers)
    spans_bound = max_spans(denoisers, max_length)
    table = {
        "noise_density": tf.constant([d.corruption_rate for d in denoisers], tf.float32),
        "mean_span": tf.constant([float(d.mean_span) for d in denoisers], tf.float32),
        "num_spans": tf.constant([int(d.num_spans or 0) for d in denoisers], tf.int32),
        "prefix": tf.constant([d.prefix_lm for d in denoisers], tf.bool),
        "mode_token": tf.constant([-1 if d.mode_token is None else d.mode_token for d in denoisers], tf.int32),
    }

    def fn(tokens, lengths, keys):
        choice = sample_denoisers(keys, denoisers)
        params = {name: tf.gather(values, choice) for name, values in table.items()}
        inputs, targets = span_corruption.corrupt_batch(
            tokens, lengths, keys, sentinel_ids=sentinel_ids, max_spans=spans_bound, eos_id=eos_id, **params
        )
        out = {"inputs": inputs, "targets": targets}
        if with_denoiser_id:
            out["denoiser"] = choice
        return out

    return span_corruption.batched_map(dataset, fn, seed=seed, feature=feature, batch_size=batch_size)
