"""`python -m adaptation.infer --gin_file=runs/infer.gin --gin.CHECKPOINT_PATH="'/tmp/run'" ...`.

Decodes with an encoder-decoder checkpoint (any format `adaptation.load_checkpoint` reads, e.g. a
trainer MODEL_DIR: its latest step) and writes one JSON line per input: {"index", "inputs",
"prediction"} (+ "targets" for seqio tasks). Inputs come from a text file (one example per line,
tokenized with `vocabulary_path`, or bytes) or from a seqio task split.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Iterator, Optional, Sequence

import jax
import numpy as np

from adaptation import gin_utils, partitioning


def load_for_inference(checkpoint_path: str, mesh_config: partitioning.MeshConfig) -> tuple[Any, Any]:
    """(model, params placed on the mesh) of a checkpoint."""
    from adaptation.checkpoints.loader import load_checkpoint
    from adaptation.trainer import place_params

    model, params = load_checkpoint(checkpoint_path)
    mesh = partitioning.make_mesh(mesh_config)
    return model, place_params(model, params, mesh, mesh_config.rules)


def decode_rows(
    model: Any, params: Any, rows: Iterable[tuple[int, np.ndarray]], *, batch_size: int, inputs_length: int,
    max_decode_length: int, method: str = "greedy", seed: int = 0, **decode_kwargs: Any,
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, encoder ids) rows -> (index, decoded ids up to and including EOS), in batches padded
    to a fixed shape (one compilation)."""
    from adaptation import decoding

    rng = jax.random.PRNGKey(seed)

    def flush(batch):
        tokens = np.zeros((batch_size, inputs_length), np.int32)
        for i, (_, ids) in enumerate(batch):
            ids = np.asarray(ids)[:inputs_length]
            tokens[i, : len(ids)] = ids
        out = np.asarray(jax.device_get(decoding.generate(
            model, params, tokens, max_decode_length=max_decode_length, method=method,
            rng=jax.random.fold_in(rng, batch[0][0]), **decode_kwargs,
        )))
        for i, (index, _) in enumerate(batch):
            ids = out[i].tolist()
            yield index, ids[: ids.index(decoding.EOS_ID) + 1] if decoding.EOS_ID in ids else ids

    batch: list = []
    for row in rows:
        batch.append(row)
        if len(batch) == batch_size:
            yield from flush(batch)
            batch = []
    if batch:
        yield from flush(batch)


def _vocabulary(vocabulary_path: Optional[str]):
    import seqio

    return seqio.SentencePieceVocabulary(vocabulary_path) if vocabulary_path else seqio.ByteVocabulary()


def _strip(ids: Sequence[int]) -> list[int]:
    return [int(i) for i in ids if int(i) > 2]  # drop pad / eos / bos before detokenizing


def infer(
    *,
    checkpoint_path: str,
    output_file: str,
    input_file: Optional[str] = None,
    mixture_or_task_name: Optional[str] = None,
    split: str = "validation",
    vocabulary_path: Optional[str] = None,
    inputs_length: int = 512,
    max_decode_length: int = 64,
    batch_size: int = 8,
    num_examples: Optional[int] = None,
    method: str = "greedy",
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    beam_size: int = 4,
    alpha: float = 0.6,
    seed: int = 0,
    mesh_config: partitioning.MeshConfig = partitioning.MeshConfig(),
) -> int:
    """Writes predictions to `output_file` (JSONL, process 0); returns the number of examples."""
    if (input_file is None) == (mixture_or_task_name is None):
        raise ValueError("give exactly one of input_file and mixture_or_task_name.")
    model, params = load_for_inference(checkpoint_path, mesh_config)
    examples = []
    if input_file is not None:
        vocab = _vocabulary(vocabulary_path)
        with open(input_file) as f:
            lines = [line.rstrip("\n") for line in f]
        examples = [{"inputs": line, "ids": vocab.encode(line) + [1]} for line in lines[:num_examples]]
    else:
        import seqio

        task = seqio.get_mixture_or_task(mixture_or_task_name)
        vocab = task.output_features["targets"].vocabulary
        ds = task.get_dataset({"inputs": inputs_length, "targets": max_decode_length}, split=split, shuffle=False)
        for ex in ds.take(num_examples or -1).as_numpy_iterator():
            examples.append({
                "inputs": vocab.decode(_strip(ex["inputs"])), "ids": ex["inputs"].tolist(),
                "targets": vocab.decode(_strip(ex["targets"])),
            })
    rows = ((i, ex["ids"]) for i, ex in enumerate(examples))
    decoded = decode_rows(
        model, params, rows, batch_size=batch_size, inputs_length=inputs_length,
        max_decode_length=max_decode_length, method=method, seed=seed, temperature=temperature,
        top_k=top_k, top_p=top_p, beam_size=beam_size, alpha=alpha,
    )
    results = []
    for index, ids in decoded:
        ex = examples[index]
        results.append({"index": index, "inputs": ex["inputs"], "prediction": vocab.decode(_strip(ids)),
                        **({"targets": ex["targets"]} if "targets" in ex else {})})
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
        with open(output_file, "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
        logging.info("wrote %d predictions to %s", len(results), output_file)
    return len(results)


def _main(args) -> int:
    gin_utils.register_configurables()
    configured = gin_utils.bind_configurable(infer, "infer")
    gin_utils.parse_config(args.gin_file, args.gin_bindings, args.search_paths)
    configured()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console-script entry point (`adaptation-infer`)."""
    return gin_utils.run(_main, "Decode with a checkpoint from gin configs.", argv)


if __name__ == "__main__":
    raise SystemExit(main())
