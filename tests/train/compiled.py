"""Checks on a compiled step's optimized HLO that the TPU and GPU compile tests share."""

from __future__ import annotations

import re

from flava_jax.train.roofline import array_bytes, instructions

# Host round trips a step must not hold: Python callbacks, infeed/outfeed, host send/recv.
_HOST_OPS = re.compile(r"^(infeed|outfeed|send|recv|send-done|recv-done)$")


def collectives(hlo: str) -> dict[str, float]:
    """Bytes all-gathered, count of all-reduces and of reduce-scatters (TPU programs scatter gradients either as
    reduce-scatter ops or as fused all-reduce-scatter computations), after checking the program holds no f64 and no
    host round trip."""
    program = list(instructions(hlo))
    assert not [i.name for i in program if "f64[" in i.shape], "f64: software on TPUs, 1/64 rate on most GPUs"
    assert not [i.name for i in program if _HOST_OPS.match(i.opcode)
                or (i.opcode == "custom-call" and "callback" in i.attributes.lower())], "host round trips"
    return {"gathered": sum(array_bytes(i.shape) for i in program if i.opcode.startswith("all-gather")),
            "reduces": sum(i.opcode.startswith("all-reduce") for i in program),
            "scatters": sum(i.opcode.startswith("reduce-scatter")
                            or (i.opcode == "fusion" and "calls=%all-reduce-scatter" in i.attributes)
                            for i in program)}
