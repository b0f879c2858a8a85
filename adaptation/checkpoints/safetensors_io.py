"""Streaming read and atomic write of Hugging Face checkpoint directories (config.json + safetensors).

Layout of a directory: `config.json`, and either `model.safetensors` or shards named in
`model.safetensors.index.json` (`{"metadata": {"total_size": N}, "weight_map": {name: file}}`).
Tensors are read one at a time with `safetensors.safe_open` (numpy framework), keeping the stored
dtype (bfloat16 arrives as an `ml_dtypes.bfloat16` array). Nothing is ever unpickled.
Writing streams tensors into shards of at most `max_shard_bytes`, inside a temporary directory
next to the target that is renamed at the end.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Optional, Union

import numpy as np

from adaptation.checkpoints.common import CheckpointError, atomic_directory, require_dir

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 1024**3


def read_hf_config(path: Union[str, os.PathLike]) -> dict:
    """The parsed `config.json` of a Hugging Face directory."""
    path = require_dir(path)
    file = os.path.join(path, CONFIG)
    if not os.path.isfile(file):
        raise CheckpointError(f"{path!r} has no {CONFIG}; a Hugging Face checkpoint directory needs one.")
    try:
        with open(file) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e}).") from None


class SafetensorsReader:
    """Tensor-by-tensor access to the safetensors files of a Hugging Face directory.

    Use as a context manager (closes the files). `names()` lists every tensor, `shape(name)` reads
    a header, `get(name, expected_shape)` loads one tensor and checks its shape.
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = require_dir(path)
        self._files: dict[str, str] = {}  # tensor name -> file name
        self._handles: dict[str, object] = {}
        index = os.path.join(self.path, INDEX)
        single = os.path.join(self.path, SINGLE)
        if os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no 'weight_map' object.")
            for file in sorted(set(weight_map.values())):
                if not os.path.isfile(os.path.join(self.path, file)):
                    raise CheckpointError(f"{index} names shard {file!r}, which is missing from {self.path!r}.")
            self._files = dict(weight_map)
        elif os.path.isfile(single):
            for name in self._open(SINGLE).keys():
                self._files[name] = SINGLE
        else:
            raise CheckpointError(f"{self.path!r} has neither {SINGLE} nor {INDEX}.")

    def _open(self, file: str):
        if file not in self._handles:
            from safetensors import safe_open

            try:
                self._handles[file] = safe_open(os.path.join(self.path, file), framework="np")
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointError(f"{os.path.join(self.path, file)}: not a readable safetensors file ({e}).") from None
        return self._handles[file]

    def close(self) -> None:
        """Releases the open files."""
        self._handles.clear()

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def names(self) -> list[str]:
        """All tensor names, sorted."""
        return sorted(self._files)

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def _require(self, name: str) -> str:
        if name not in self._files:
            raise CheckpointError(f"checkpoint {self.path!r} has no tensor {name!r}.")
        return self._files[name]

    def shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of a tensor (reads only the header)."""
        return tuple(self._open(self._require(name)).get_slice(name).get_shape())

    def get(self, name: str, expected_shape: Optional[tuple[int, ...]] = None, source: str = "config.json") -> np.ndarray:
        """Loads one tensor in its stored dtype; a CheckpointError naming it when the shape differs."""
        if expected_shape is not None:
            found = self.shape(name)
            if found != tuple(expected_shape):
                raise CheckpointError(
                    f"tensor {name!r} in {self.path!r}: expected shape {tuple(expected_shape)} (from {source}), "
                    f"found {found}."
                )
        return self._open(self._require(name)).get_tensor(name)


def write_hf_directory(
    path: Union[str, os.PathLike],
    config: dict,
    tensors: Iterable[tuple[str, np.ndarray]],
    *,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
    extra_files: Optional[dict[str, str]] = None,
) -> list[str]:
    """Writes `config.json` and the tensors (streamed) atomically; returns the written file names.

    Tensors are gathered into shards of at most `max_shard_bytes` (a tensor larger than that gets
    a shard of its own); one shard is written as `model.safetensors`, more as
    `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`.
    """
    from safetensors.numpy import save_file

    with atomic_directory(path, overwrite=overwrite) as tmp:
        shards: list[tuple[str, list[str], int]] = []  # (temporary file, names, bytes)
        pending: dict[str, np.ndarray] = {}
        pending_bytes = 0
        total = 0

        def flush():
            nonlocal pending, pending_bytes
            if pending:
                file = f"shard-{len(shards):05d}.safetensors"
                save_file(pending, os.path.join(tmp, file), metadata={"format": "pt"})
                shards.append((file, list(pending), pending_bytes))
                pending, pending_bytes = {}, 0

        for name, array in tensors:
            array = np.ascontiguousarray(array)
            if name in pending or any(name in names for _, names, _ in shards):
                raise CheckpointError(f"tensor {name!r} written twice.")
            if pending and pending_bytes + array.nbytes > max_shard_bytes:
                flush()
            pending[name] = array
            pending_bytes += array.nbytes
            total += array.nbytes
        flush()
        if not shards:
            raise CheckpointError("no tensors to write.")

        written = [CONFIG]
        if len(shards) == 1:
            os.rename(os.path.join(tmp, shards[0][0]), os.path.join(tmp, SINGLE))
            written.append(SINGLE)
        else:
            weight_map = {}
            for i, (file, names, _) in enumerate(shards):
                final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                os.rename(os.path.join(tmp, file), os.path.join(tmp, final))
                weight_map.update({n: final for n in names})
                written.append(final)
            with open(os.path.join(tmp, INDEX), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
            written.append(INDEX)
        with open(os.path.join(tmp, CONFIG), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        for file, text in (extra_files or {}).items():
            with open(os.path.join(tmp, file), "w") as f:
                f.write(text)
            written.append(file)
    return written
