"""A roofline over a compiled program's optimized HLO: what one device's step costs, op by op.

XLA's `cost_analysis()` totals count a loop body once (a scan over 57 micro-steps costs as one), and libtpu's own
time estimate (`optimal_seconds`) can come out negative for a whole train step. So this reads the optimized HLO text
instead: every top-level instruction of the entry computation (fusions whole, loop bodies times their known trip
count) costs the larger of its FLOPs at the chip's peak and its memory traffic at the chip's bandwidth. Summed, that
is a lower bound on the step's time if nothing overlaps and every op ran at a roofline; collectives are kept apart
(they use the interconnect, and XLA overlaps most of them with compute).

FLOPs are those of matrix products and convolutions (TPU programs express both as `convolution`); element-wise
work is not counted, as it rarely bounds a step that is not already bound by its bytes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator

_ITEMSIZE = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
             "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_ITEMSIZE, key=len, reverse=True)) + r")\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$")
_FREE = frozenset({"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id",
                   "replica-id", "opt-barrier", "iota"})
_COLLECTIVE = re.compile(r"^(all-gather|all-reduce|reduce-scatter|collective-permute|all-to-all|collective-broadcast)")
_ASYNC_DONE = re.compile(r"-done$")


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str  # the result type, e.g. "f32[8,16]{1,0}" or a tuple "(f32[8]{0}, s32[])"
    opcode: str
    operands: tuple[str, ...]
    attributes: str
    arguments: str  # the text between the parentheses, e.g. a constant's value


@dataclasses.dataclass
class Cost:
    """FLOPs, HBM bytes, collective bytes and roofline seconds of a piece of a program."""

    flops: float = 0.0
    bytes: float = 0.0
    collective_bytes: float = 0.0
    seconds: float = 0.0
    flops_bound_seconds: float = 0.0  # the part of `seconds` spent where FLOPs, not bytes, bound an op

    def add(self, other: Cost, times: float = 1.0) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + times * getattr(other, field.name))


def array_bytes(shape: str) -> int:
    """Bytes of every array in a type string (tuples summed)."""
    return sum(math.prod(dims_of(dims)) * _ITEMSIZE[dtype] for dtype, dims in _ARRAY.findall(shape))


def dims_of(dims: str) -> tuple[int, ...]:
    return tuple(int(d) for d in dims.split(",") if d)


def _closing(text: str, start: int) -> int:
    """The index of the parenthesis that closes the one at `start`."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced parentheses in {text[:200]!r}")


def _split_type(text: str) -> tuple[str, str]:
    """(result type, the rest) of an instruction's right-hand side."""
    if not text.startswith("("):
        shape, _, rest = text.partition(" ")
        return shape, rest
    end = _closing(text, 0)
    return text[:end + 1], text[end + 2:]


def _call(text: str) -> tuple[str, tuple[str, ...], str, str]:
    """(opcode, operand names, attributes, arguments) of "opcode(%a, %b), attrs"."""
    start = text.index("(")
    end = _closing(text, start)
    arguments = text[start + 1:end]
    operands = tuple(m.group(1) for m in re.finditer(r"%([\w.\-]+)", arguments))
    return text[:start].strip(), operands, text[end + 1:].lstrip(", "), arguments


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """({computation name: instructions}, the entry computation's name) of an HLO module's text."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        if header := _HEADER.match(line):
            current = computations.setdefault(header.group(2), [])
            entry = header.group(2) if header.group(1) else entry
        elif line.strip() == "}":
            current = None
        elif current is not None and (match := _INSTRUCTION.match(line)):
            shape, rest = _split_type(match.group(2))
            current.append(Instruction(match.group(1), shape, *_call(rest)))
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


def _attribute(attributes: str, name: str) -> str | None:
    match = re.search(rf"\b{name}=(%?[\w.\-]+|\{{[^}}]*\}})", attributes)
    return match.group(1).lstrip("%") if match else None


def trip_count(instruction: Instruction, condition: list[Instruction]) -> int:
    """A while loop's trip count: XLA's `known_trip_count` when it gives one, else N of a condition `i < N` on a
    counter from 0 (lax.scan's and fori_loop's form); 1 when neither is found."""
    match = re.search(r'"known_trip_count":\{"n":"(\d+)"', instruction.attributes)
    if match:
        return int(match.group(1))
    constants = {i.name: i.arguments for i in condition if i.opcode == "constant"}
    root = condition[-1] if condition else None
    if root is not None and root.opcode == "compare" and "direction=LT" in root.attributes:
        values = [re.match(r"\s*(\d+)", constants[o]) for o in root.operands if o in constants]
        if len(values) == 1 and values[0]:
            return int(values[0].group(1))
    return 1


def convolution_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    """2 x output elements x the kernel's elements per output feature (a dot is a 1x1 convolution on TPU)."""
    labels = re.search(r"dim_labels=(\w+)_(\w+)->", instruction.attributes)
    kernel = _ARRAY.search(shapes.get(instruction.operands[1], ""))
    out = _ARRAY.search(instruction.shape)
    if not (labels and kernel and out):
        return 0.0
    kernel_labels = labels.group(2)
    kernel_dims = dims_of(kernel.group(2))
    per_output = math.prod(size for label, size in zip(kernel_labels, kernel_dims, strict=True) if label != "o")
    groups = int(_attribute(instruction.attributes, "batch_group_count") or 1)
    return 2.0 * math.prod(dims_of(out.group(2))) * per_output / groups


def dot_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    """2 x output elements x the contracted size."""
    lhs = _ARRAY.search(shapes.get(instruction.operands[0], ""))
    out = _ARRAY.search(instruction.shape)
    contracting = _attribute(instruction.attributes, "lhs_contracting_dims")
    if not (lhs and out and contracting):
        return 0.0
    lhs_dims = dims_of(lhs.group(2))
    contracted = math.prod(lhs_dims[int(d)] for d in contracting.strip("{}").split(",") if d)
    return 2.0 * math.prod(dims_of(out.group(2))) * contracted


class Roofline:
    """Costs of a parsed module's computations against one chip's peak FLOP/s and bytes/s."""

    def __init__(self, hlo_text: str, peak_flops: float, bandwidth: float) -> None:
        self.computations, self.entry = parse_module(hlo_text)
        self.peak, self.bandwidth = peak_flops, bandwidth
        self._fused_costs: dict[str, tuple[float, float]] = {}

    def total(self) -> Cost:
        return self.cost(self.entry)

    def cost(self, computation: str) -> Cost:
        """The roofline cost of running `computation` once, instruction by instruction."""
        instructions = self.computations[computation]
        shapes = {i.name: i.shape for i in instructions}
        total = Cost()
        for instruction in instructions:
            total.add(*self._instruction(instruction, shapes))
        return total

    def _instruction(self, instruction: Instruction, shapes: dict[str, str]) -> tuple[Cost, float]:
        """(cost of one execution, times it runs) of a top-level instruction."""
        op = instruction.opcode
        if op == "while":
            condition = self.computations.get(_attribute(instruction.attributes, "condition") or "", [])
            return self.cost(_attribute(instruction.attributes, "body")), trip_count(instruction, condition)
        if op in ("call", "async-start") and (called := _attribute(instruction.attributes, "calls")):
            return self.cost(called), 1
        if op == "conditional":
            branches = re.findall(r"%([\w.\-]+)", _attribute(instruction.attributes, "branch_computations") or "")
            return max((self.cost(b) for b in branches), key=lambda c: c.seconds, default=Cost()), 1
        if op in _FREE or _ASYNC_DONE.search(op):
            return Cost(), 1
        if _COLLECTIVE.match(op):
            return Cost(collective_bytes=array_bytes(instruction.shape)), 1
        moved = array_bytes(instruction.shape) + sum(array_bytes(shapes.get(o, "")) for o in instruction.operands)
        called = _attribute(instruction.attributes, "calls") if op == "fusion" else None
        # TPU programs fuse collectives with the compute they overlap ("async collective fusions"): count both.
        flops, collective = self._fused(called) if called else (self._op_flops(instruction, shapes), 0.0)
        compute, memory = flops / self.peak, moved / self.bandwidth
        seconds = max(compute, memory)
        return Cost(flops=flops, bytes=moved, collective_bytes=collective, seconds=seconds,
                    flops_bound_seconds=seconds if compute >= memory else 0.0), 1

    def _op_flops(self, instruction: Instruction, shapes: dict[str, str]) -> float:
        if instruction.opcode == "convolution":
            return convolution_flops(instruction, shapes)
        if instruction.opcode == "dot":
            return dot_flops(instruction, shapes)
        return 0.0

    def _fused(self, computation: str) -> tuple[float, float]:
        """(FLOPs, collective bytes) inside a fused computation, nested fusions included."""
        if computation not in self._fused_costs:
            instructions = self.computations[computation]
            shapes = {i.name: i.shape for i in instructions}
            flops = collective = 0.0
            for i in instructions:
                if i.opcode == "fusion" and (called := _attribute(i.attributes, "calls")):
                    inner = self._fused(called)
                    flops, collective = flops + inner[0], collective + inner[1]
                elif _COLLECTIVE.match(i.opcode):
                    collective += array_bytes(i.shape)
                else:
                    flops += self._op_flops(i, shapes)
            self._fused_costs[computation] = (flops, collective)
        return self._fused_costs[computation]


def cost_summary(cost_analysis: dict | list | None) -> dict[str, float]:
    """XLA's own totals (FLOPs, bytes accessed, and libtpu's `optimal_seconds` estimate) from `cost_analysis()`."""
    costs = cost_analysis[0] if isinstance(cost_analysis, list) else (cost_analysis or {})
    return {key: float(costs[key]) for key in ("flops", "bytes accessed", "optimal_seconds") if key in costs}


def instructions(hlo_text: str) -> Iterator[Instruction]:
    """Every instruction of every computation (for checks such as "no f64", "no host callback")."""
    computations, _ = parse_module(hlo_text)
    for body in computations.values():
        yield from body
