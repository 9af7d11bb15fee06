"""Where the model's activations go on a mesh: each main activation names its dimensions logically ("batch",
"length", "embed", "heads", "head_dim", "mlp", "vocab") and `constrain` places it by the rules in force (logical
name -> mesh axes). The rules are set only while a step is traced under `train.sharding.shard_activations`, so a
plain `model.apply`, or one device, leaves every constraint a no-op.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping, Sequence

import jax
from jax.sharding import Mesh, PartitionSpec

# Set only inside `rules`: everywhere else the model's constraints are no-ops.
_RULES: contextvars.ContextVar[Mapping[str, tuple[str, ...]] | None] = contextvars.ContextVar(
    "flava_jax_activation_rules", default=None)


@contextlib.contextmanager
def rules(resolved: Mapping[str, tuple[str, ...]]) -> Iterator[None]:
    """`constrain` follows `resolved` (logical name -> mesh axes) inside this block."""
    token = _RULES.set(resolved)
    try:
        yield
    finally:
        _RULES.reset(token)


def activation_spec(shape: Sequence[int], names: Sequence[str | None], rules: Mapping[str, Sequence[str]],
                    mesh: Mesh | jax.sharding.AbstractMesh) -> PartitionSpec:
    """The partition spec `rules` give an activation of `shape` whose dimensions have the logical `names` (None or a
    name without a rule: replicated). Per dimension, mesh axes of size 1 or already used by an earlier dimension are
    skipped, and the axes stop at the first that would not divide it: a constraint is a layout hint, not a
    requirement that every shape divide."""
    if len(names) != len(shape):
        raise ValueError(f"{len(names)} axis names {tuple(names)} for an activation of shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape, strict=True):
        axes, shards = [], 1
        for axis in rules.get(name, ()) if name is not None else ():
            size = mesh.shape[axis]
            if axis in used or size == 1:
                continue
            if dim % (shards * size):
                break
            axes.append(axis)
            shards *= size
        used.update(axes)
        spec.append(tuple(axes) if len(axes) > 1 else axes[0] if axes else None)
    return PartitionSpec(*spec)


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
    """`x` constrained to `activation_spec` for its dimensions' logical `names`, one per dimension. A no-op (`x`
    itself) outside `shard_activations` or on a one-device mesh, so the model runs unchanged without a mesh."""
    rules, mesh = _RULES.get(), jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, activation_spec(x.shape, names, rules, mesh))


def map_shards(fn: Callable[..., jax.Array], args: Sequence[jax.Array], names: Sequence[Sequence[str | None]]
               ) -> jax.Array:
    """`fn(*args)` run on each device's block of `args` (activations whose dimensions have the logical `names`),
    under `jax.shard_map`: for kernels XLA cannot split itself (a Pallas call would otherwise be run whole, its inputs
    gathered to every device). The result is laid out as the first argument. `fn(*args)` itself where `constrain`
    is a no-op."""
    rules, mesh = _RULES.get(), jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty or mesh.size == 1:
        return fn(*args)
    specs = tuple(activation_spec(a.shape, n, rules, mesh) for a, n in zip(args, names, strict=True))
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=specs[0], check_vma=False)(*args)
