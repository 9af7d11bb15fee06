"""The device mesh and every sharding, from config data.

* The mesh has axes (data, fsdp, tensor); a size of -1 takes the devices left; all axes are `AxisType.Auto`.
* Parameters: the first rule in `sharding.rules` (regex over the "/"-joined parameter path, with a partition spec
  over mesh axes) that matches decides; unmatched parameters are replicated (pure data parallel) or, with `fsdp`,
  sharded over the fsdp axis along their largest divisible dimension when they are large enough.
* Optimizer state follows its parameters; batches are split over (data, fsdp) on their example axis.
* Activations: the model names each dimension of its main activations logically ("batch", "length", "heads", ...)
  and `model.activation_sharding.constrain` places them by `sharding.activation_rules` (logical name -> mesh
  axes), while a step wrapped in `shard_activations` is traced. Without those constraints XLA may follow an
  FSDP-sharded weight onto an activation (attention heads split over fsdp) and then undo it by replicating the
  whole batch.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from flava_jax.common.settings import ConfigError
from flava_jax.model import activation_sharding

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the axes that split examples
Rules = Sequence[tuple[str, Sequence[str | None]]]
ActivationRules = Sequence[tuple[str, str | Sequence[str]]]



class ShardingError(ConfigError):
    """A mesh or sharding rule that cannot apply; the message says which and why."""


def make_mesh(sizes: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all); at most one size may be -1 (the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ShardingError(f"sharding.mesh: unknown axes {sorted(unknown)}; the axes are {MESH_AXES}")
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ShardingError(f"sharding.mesh: sizes {dict(zip(MESH_AXES, shape, strict=True))} must be positive, "
                            "with at most one -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ShardingError(f"sharding.mesh: {len(devices)} devices do not divide into {known}-device groups")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ShardingError(f"sharding.mesh: {dict(zip(MESH_AXES, shape, strict=True))} needs {int(np.prod(shape))} "
                            f"devices, there are {len(devices)}")
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def _path(keys: tuple[str, ...]) -> str:
    return "/".join(str(k) for k in keys)


def param_specs(params: Any, mesh: Mesh, rules: Rules, fsdp: bool, fsdp_min_size: int) -> Any:
    """A PartitionSpec per parameter (same tree); `params` may hold arrays or ShapeDtypeStructs. The first
    matching rule places mesh axes (size-1 axes count as none); FSDP then shards a free dimension."""
    compiled = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]
    fsdp_size = mesh.shape["fsdp"]
    specs = {}
    for keys, leaf in flatten_dict(params).items():
        path, shape = _path(keys), tuple(leaf.shape)
        spec = next((spec for pattern, spec in compiled if pattern.fullmatch(path)), ())
        axes = list(_fit(spec, shape, mesh, path))
        if fsdp and fsdp_size > 1 and int(np.prod(shape)) >= fsdp_min_size:
            # FSDP adds the fsdp axis on the largest dimension a rule left unsharded that it divides.
            free = [d for d in np.argsort(shape, kind="stable")[::-1] if axes[d] is None and shape[d] % fsdp_size == 0]
            if free:
                axes[free[0]] = "fsdp"
        specs[keys] = PartitionSpec(*axes)
    return unflatten_dict(specs)


def _fit(spec: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh, path: str) -> tuple[str | None, ...]:
    """A rule's spec for this parameter: aligned to its trailing dims (scanned layers add a leading axis), axes of
    size 1 dropped, and every remaining axis dividing its dimension."""
    if len(spec) > len(shape):
        raise ShardingError(f"sharding rule {spec} has more axes than {path} {shape}")
    spec = (None,) * (len(shape) - len(spec)) + tuple(spec)
    out = []
    for dim, axis in zip(shape, spec, strict=True):
        if axis is not None and axis not in mesh.shape:
            raise ShardingError(f"sharding rule for {path} names axis {axis!r}; the axes are {MESH_AXES}")
        if axis is None or mesh.shape[axis] == 1:
            out.append(None)
            continue
        if dim % mesh.shape[axis]:
            raise ShardingError(f"sharding rule for {path}: dimension {dim} does not divide over {axis!r} "
                                f"({mesh.shape[axis]} devices)")
        out.append(axis)
    return tuple(out)


def _activation_rules(rules: ActivationRules, mesh: Mesh) -> dict[str, tuple[str, ...]]:
    """`rules` as {logical name: mesh axes}; an unknown mesh axis raises ShardingError."""
    out = {}
    for name, axes in rules:
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        unknown = [a for a in axes if a not in mesh.shape]
        if unknown:
            raise ShardingError(f"sharding.activation_rules: {name!r} names axes {unknown}; the axes are {MESH_AXES}")
        out[name] = axes
    return out


def shard_activations(fn: Callable[..., Any], mesh: Mesh, rules: ActivationRules) -> Callable[..., Any]:
    """`fn`, for `jax.jit`, traced with `mesh` as the abstract mesh and `rules` as the activation rules, so the
    model's `constrain` calls place its activations. (`jax.set_mesh` cannot be entered inside a trace;
    `use_abstract_mesh` can, and a partition spec needs no more than the abstract mesh.)"""
    resolved = _activation_rules(rules, mesh)

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        with activation_sharding.rules(resolved), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return traced


def without_fsdp(specs: Any) -> Any:
    """`specs` with the fsdp axis taken out of every dimension: the parameters gathered, other axes kept."""
    def drop(axes: Any) -> Any:
        if isinstance(axes, tuple):
            kept = tuple(a for a in axes if a != "fsdp")
            return kept or None
        return None if axes == "fsdp" else axes

    return jax.tree.map(lambda spec: PartitionSpec(*map(drop, spec)), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def named(specs: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def opt_state_shardings(opt_state: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Each parameter-shaped optimizer leaf (Adam's moments, ...) sharded like its parameter, found by the dict
    keys of its path; the rest (step counts) replicated."""
    by_path = {keys: sharding for keys, sharding in flatten_dict(param_shardings).items()}

    def leaf_sharding(path: tuple[Any, ...], leaf: Any) -> NamedSharding:
        keys = tuple(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey))
        for start in range(len(keys)):
            if keys[start:] in by_path:
                return by_path[keys[start:]]
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(leaf_sharding, opt_state)


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """Examples split over (data, fsdp) on axis `leading` (1 for stacked micro-batches)."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading), BATCH_AXES))


def global_batch(local: Any, sharding: NamedSharding) -> Any:
    """Global arrays from this process's part of the batch (multi-host safe)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def examples_per_process(global_size: int, mesh: Mesh) -> int:
    """This process's share of a global batch dimension, which must split evenly over devices and processes."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_size % shards:
        raise ShardingError(f"a batch of {global_size} does not split over {shards} data x fsdp shards")
    return global_size // jax.process_count()


def check_sharded(params: Any, shardings: Any, mesh: Mesh, min_size: int) -> None:
    """With FSDP on, fail when a parameter of at least `min_size` elements stayed fully replicated."""
    if mesh.shape["fsdp"] == 1:
        return
    flat_shardings = flatten_dict(shardings)
    lonely = [(_path(k), tuple(v.shape)) for k, v in flatten_dict(params).items()
              if int(np.prod(v.shape)) >= min_size and flat_shardings[k].is_fully_replicated]
    if lonely:
        raise ShardingError(f"FSDP is on but these large parameters are replicated: {lonely[:10]}"
                            + (f" and {len(lonely) - 10} more" if len(lonely) > 10 else ""))
