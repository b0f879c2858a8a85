"""Gin plumbing shared by the entry points (`adaptation.train`, `.eval`, `.infer`).

Flags (t5x style):
  --gin_file=PATH            repeatable; looked up in --gin_search_paths (default: the repo's gin/)
  --gin_bindings='A.b = 1'   repeatable
  --gin.A.b=1                shorthand for --gin_bindings='A.b = 1'
  --gin_search_paths=DIR,... extra directories searched for gin files and their includes

Library code never imports gin: configurable names are registered here, on the dataclasses and
functions the entry points take.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pathlib
import sys
from typing import Any, Callable, Optional, Sequence

import gin

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent

# (module, names) registered as external configurables under the module's path; a module that
# cannot be imported here (an optional objective, say) is skipped.
CONFIGURABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("adaptation.models.presets", ("encoder_decoder", "decoder_only")),
    ("adaptation.models.config", ("TransformerConfig", "EncoderDecoderConfig", "encoder_decoder_from")),
    ("adaptation.trainer", ("TrainConfig", "OptimizerConfig", "FreezeConfig")),
    ("adaptation.partitioning", ("MeshConfig", "DistributedConfig", "standard_logical_axis_rules")),
    ("adaptation.checkpoints.train_state", ("CheckpointConfig",)),
    ("adaptation.objectives.losses", ("cross_entropy_loss_fn",)),
    ("adaptation.objectives.distillation", ("make_kd_loss_fn",)),
    ("adaptation.models.heads", ("HeadConfig",)),
    ("adaptation.classifier", ("ClassifierConfig", "encoder_classifier")),
    ("adaptation.objectives.classification", ("head_loss_fn",)),
)
# Configurables of entry points that read data (their module imports no TensorFlow).
DATA_CONFIGURABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("adaptation.data.config", ("DatasetConfig",)),
    ("tasks.finetune_tasks", ("superglue_task", "superglue_tasks", "superglue_mixture", "superglue_num_classes",
                              "glue_task", "glue_tasks", "glue_head", "msmarco_lists_task", "msmarco_rerank_task")),
    ("adaptation.benchmarks", ("superglue_benchmark", "glue_benchmark", "ranking_benchmark")),
)


class GinConfigError(Exception):
    """A gin file or binding could not be parsed (message + search paths)."""


def default_search_paths() -> list[str]:
    """The installed package's `gin/`, the source checkout's `gin/`, then the current directory."""
    paths = [str(c) for c in (_PACKAGE_DIR / "gin", _PACKAGE_DIR.parent / "gin") if c.is_dir()]
    return paths + [os.getcwd()]


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """Turns `--gin.KEY=VALUE` into `--gin_bindings=KEY = VALUE`."""
    out = []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            key, value = arg[len("--gin.") :].split("=", 1)
            out.append(f"--gin_bindings={key} = {value}")
        else:
            out.append(arg)
    return out


def make_parser(description: str) -> argparse.ArgumentParser:
    """The entry points' common flags."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="gin binding (repeatable)")
    parser.add_argument(
        "--gin_search_paths", default="", help="comma-separated directories searched for gin files"
    )
    return parser


def register_configurables(groups: Sequence[tuple[str, tuple[str, ...]]] = CONFIGURABLES) -> None:
    """Registers the library's dataclasses and functions with gin (idempotent)."""
    for module_name, names in groups:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in names:
            obj = getattr(module, name, None)
            if obj is None:
                continue
            short = module_name.rsplit(".", 1)[-1]
            try:
                gin.external_configurable(obj, name=name, module=short)
            except ValueError:  # already registered
                pass


def _tolerate_namespace_packages() -> None:
    """gin looks `runs/pretrain.gin` up as a resource of a Python package `runs` and raises TypeError when
    `runs` is a namespace package (e.g. an output directory `./runs` on sys.path); treat it as absent."""
    from gin import config as gin_config
    from gin import resource_reader

    def exists(path: str) -> bool:
        try:
            return resource_reader.system_path_file_exists(path)
        except TypeError:
            return False

    readers = gin_config._FILE_READERS  # gin 0.5: [(reader, existence_check), ...]
    for i, (reader, check) in enumerate(readers):
        if check is resource_reader.system_path_file_exists:
            readers[i] = (reader, exists)


def parse_config(gin_files: Sequence[str], gin_bindings: Sequence[str], search_paths: Sequence[str]) -> None:
    """Parses gin files and bindings; raises `GinConfigError` with gin's message and the paths tried."""
    _tolerate_namespace_packages()
    paths = [p for p in search_paths if p]
    for path in paths:
        gin.add_config_file_search_path(path)
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings), finalize_config=False)
    except (IOError, ValueError, SyntaxError, ImportError) as e:
        raise GinConfigError(f"{e}\ngin search paths tried: {paths}") from None


def bind_configurable(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`fn` registered under `name` (the entry function that gin files bind, e.g. `train.model_dir`)."""
    try:
        return gin.external_configurable(fn, name=name)
    except ValueError:
        return gin.get_configurable(name)


def write_operative_config(model_dir: str, filename: str = "config.gin") -> Optional[str]:
    """Writes gin's operative config to `model_dir/filename` (process 0 only); returns the text."""
    import jax

    text = gin.operative_config_str()
    if jax.process_index() == 0:
        os.makedirs(model_dir, exist_ok=True)
        with open(os.path.join(model_dir, filename), "w") as f:
            f.write(text)
    return text


class _GinSearchNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("Path not found") or message.startswith("system_path_file_exists"))


def run(main_fn: Callable[[Any], Any], description: str, argv: Optional[Sequence[str]] = None) -> int:
    """Parses flags and gin, then calls `main_fn(args)`; clean messages instead of tracebacks for
    configuration errors. Returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", force=True)
    for noisy in ("absl", "jax._src", "orbax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:  # gin logs every search path it tries as an error
        handler.addFilter(_GinSearchNoise())
    argv = rewrite_gin_args(sys.argv[1:] if argv is None else argv)
    parser = make_parser(description)
    args = parser.parse_args(argv)
    args.search_paths = default_search_paths() + [p for p in args.gin_search_paths.split(",") if p]
    try:
        return int(main_fn(args) or 0)
    except GinConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
