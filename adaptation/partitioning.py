"""Device meshes, logical-axis rules, shardings and multi-host start-up.

The mesh has three named axes (`MESH_AXES`):
  data    pure data parallelism (replicated params);
  fsdp    data parallelism with params and optimizer state sharded over it (ZeRO-3 style);
  tensor  tensor (model) parallelism over heads, MLP width and vocabulary.
Its shape comes from `MeshConfig.mesh_shape`; one entry may be -1 ("all remaining devices"). On a
multi-slice pod `dcn_mesh_shape` gives the across-slice (data-centre network) factor of each axis,
and `mesh_shape` the within-slice (ICI) factor.

Models name their axes logically (`adaptation.models.axes`); `standard_logical_axis_rules` maps
those names to mesh axes. Rules are tried in order and a mesh axis is used at most once per array,
so `embed -> fsdp` shards parameters but is skipped for activations whose batch axis already
took `fsdp`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from adaptation.models import axes

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both data-parallel axes

LogicalRules = tuple[tuple[str, Any], ...]


class MeshShapeError(ValueError):
    """A mesh shape that does not fit the devices."""


def standard_logical_axis_rules() -> LogicalRules:
    """Logical axis name -> mesh axes (None: replicated). FSDP on `embed`, tensor parallelism on
    heads / MLP / vocabulary, the batch over data x fsdp."""
    return (
        (axes.BATCH, BATCH_AXES),
        (axes.VOCAB, "tensor"),
        (axes.HEADS, "tensor"),
        (axes.KV_HEADS, "tensor"),
        (axes.MLP, "tensor"),
        (axes.EMBED, "fsdp"),
        (axes.HEAD_DIM, None),
        (axes.LENGTH, None),
        (axes.KV_LENGTH, None),
        (axes.LAYERS, None),
        (axes.CLASSES, None),
    )


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """How to lay the devices out.

    Attributes:
      mesh_shape: (data, fsdp, tensor) sizes within a slice; one -1 fills the remaining devices.
      dcn_mesh_shape: (data, fsdp, tensor) sizes across slices (multi-slice pods); None: one slice.
      logical_axis_rules: overrides `standard_logical_axis_rules()` when given.
    """

    mesh_shape: tuple[int, ...] = (-1, 1, 1)
    dcn_mesh_shape: Optional[tuple[int, ...]] = None
    logical_axis_rules: Optional[LogicalRules] = None

    @property
    def rules(self) -> LogicalRules:
        """The logical axis rules in use."""
        if self.logical_axis_rules is None:
            return standard_logical_axis_rules()
        return tuple((name, _as_mesh_axes(target)) for name, target in self.logical_axis_rules)


def _as_mesh_axes(target: Any) -> Any:
    return tuple(target) if isinstance(target, list) else target


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fills a -1 entry so that the product equals `num_devices`; errors naming both numbers."""
    shape = tuple(int(s) for s in mesh_shape)
    if len(shape) != len(MESH_AXES):
        raise MeshShapeError(f"mesh_shape {shape} must give one size per mesh axis {MESH_AXES}.")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise MeshShapeError(f"mesh_shape {shape}: sizes must be positive, with at most one -1.")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise MeshShapeError(
                f"mesh_shape {shape} cannot be filled: {num_devices} devices are not a multiple of {known}."
            )
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise MeshShapeError(
            f"mesh_shape {shape} needs {math.prod(shape)} devices, but {num_devices} are available; "
            "set MESH_SHAPE so that the product matches (one entry may be -1)."
        )
    return shape


def make_mesh(config: MeshConfig, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A `Mesh` over `devices` (default: all devices of all processes) with axes `MESH_AXES`."""
    devices = list(jax.devices() if devices is None else devices)
    auto = (AxisType.Auto,) * len(MESH_AXES)
    if config.dcn_mesh_shape is not None:
        from jax.experimental import mesh_utils

        num_slices = _num_slices(devices)
        dcn = resolve_mesh_shape(config.dcn_mesh_shape, num_slices)
        ici = resolve_mesh_shape(config.mesh_shape, len(devices) // num_slices)
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
        return Mesh(grid, MESH_AXES, axis_types=auto)
    shape = resolve_mesh_shape(config.mesh_shape, len(devices))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=auto)


def _num_slices(devices: Sequence[Any]) -> int:
    return len({getattr(d, "slice_index", 0) for d in devices})


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batch arrays: leading axis split over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """A fully replicated sharding."""
    return NamedSharding(mesh, PartitionSpec())


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """`NamedSharding`s for a tree whose leaves may be `nn.LogicallyPartitioned` (others replicated)."""
    specs = nn.get_partition_spec(boxed_tree)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
    return jax.tree.map(lambda s, x: fit_sharding(s, _shape(x)), shardings, nn.meta.unbox(boxed_tree))


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(getattr(x, "shape", ()))


def fit_sharding(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
    """Drops the mesh axes of any dimension they do not divide evenly (e.g. 2 kv heads on a
    4-way tensor axis): that dimension is replicated instead."""
    spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
    changed = False
    for i, (dim, entry) in enumerate(zip(shape, spec)):
        if entry is None:
            continue
        names = entry if isinstance(entry, tuple) else (entry,)
        ways = math.prod(sharding.mesh.shape[n] for n in names)
        if dim % ways:
            spec[i] = None
            changed = True
    return NamedSharding(sharding.mesh, PartitionSpec(*spec)) if changed else sharding


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split (data x fsdp)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the data-parallel axes and processes."""
    ways = data_parallel_size(mesh)
    if batch_size % ways or batch_size % jax.process_count():
        raise ValueError(
            f"batch size {batch_size} must be divisible by data x fsdp = {ways} and by the "
            f"{jax.process_count()} processes."
        )


def host_batch_to_global(batch: dict, mesh: Mesh) -> dict:
    """Assembles this process's slice of the batch into global arrays sharded over data x fsdp."""
    sharding = batch_sharding(mesh)
    out = {}
    for name, local in batch.items():
        local = np.asarray(local)
        global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
        out[name] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out


def shard_init(
    init_fn: Callable[..., Any], mesh: Mesh, rules: LogicalRules, *args: Any
) -> tuple[Any, Any]:
    """Runs `init_fn(*args)` directly into its shards (flax `setup_initial_state` recipe).

    `init_fn` returns a tree whose leaves may be `nn.LogicallyPartitioned`; nothing is materialized
    unsharded. Returns (unboxed tree, its shardings).
    """
    with nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(init_fn, *args)
    shardings = logical_shardings(abstract, mesh, rules)

    def unboxed_init(*a):
        return nn.meta.unbox(init_fn(*a))

    tree = jit_on_mesh(unboxed_init, mesh, rules, out_shardings=shardings)(*args)
    return tree, shardings


def jit_on_mesh(fn: Callable[..., Any], mesh: Mesh, rules: LogicalRules, **jit_kwargs: Any) -> Callable[..., Any]:
    """`jax.jit(fn, **jit_kwargs)` that traces with the logical rules active and runs with `mesh` set,
    so that the models' logical activation constraints resolve to this mesh."""

    def traced(*args, **kwargs):
        with nn.logical_axis_rules(rules):
            return fn(*args, **kwargs)

    jitted = jax.jit(traced, **jit_kwargs)

    def call(*args, **kwargs):
        with jax.set_mesh(mesh):
            return jitted(*args, **kwargs)

    call.jitted = jitted  # for .lower() / cost analysis
    return call


# ---------------------------------------------------------------------------------------------
# Multi-host start-up.


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process run.

    Attributes:
      coordinator_address: "host:port" of process 0 (GPU clusters); None: auto-detect (TPU pods,
        SLURM) or single process.
      num_processes / process_id: this run's size and rank (GPU clusters without SLURM).
      local_device_ids: devices this process drives (GPU: one process per GPU).
      initialization_timeout: seconds to wait for the other processes.
    """

    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    local_device_ids: Optional[tuple[int, ...]] = None
    initialization_timeout: int = 300


def _on_tpu_pod() -> bool:
    return bool(os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def _on_slurm() -> bool:
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize_distributed(config: DistributedConfig) -> bool:
    """Calls `jax.distributed.initialize` when this is a multi-process run; returns whether it did.

    TPU pods and SLURM jobs are detected from the environment (JAX reads their variables); GPU
    clusters without SLURM pass the coordinator address, process count and rank.
    """
    explicit = config.coordinator_address is not None
    if not (explicit or _on_tpu_pod() or _on_slurm()):
        return False
    kwargs: dict[str, Any] = {"initialization_timeout": config.initialization_timeout}
    if explicit:
        kwargs.update(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
        )
    if config.local_device_ids is not None:
        kwargs["local_device_ids"] = list(config.local_device_ids)
    jax.distributed.initialize(**kwargs)
    logging.info("process %d of %d joined the run", jax.process_index(), jax.process_count())
    return True


def is_primary() -> bool:
    """True on the process that writes summaries and logs."""
    return jax.process_index() == 0
