"""A roofline over a compiled program's optimized HLO: what one device's step costs, op by op.

XLA's `cost_analysis()` totals count a loop body once (a scan over 57 micro-steps costs as one), and libtpu's own
time estimate (`optimal_seconds`) can come out negative for a whole train step. So this reads the optimized HLO text
instead: every top-level instruction of the entry computation (fusions whole, loop bodies times their known trip
count) costs the larger of its FLOPs at the chip's peak and its memory traffic at the chip's bandwidth. Summed, that
is a lower bound on the step's time if nothing overlaps and every op ran at a roofline; collectives are kept apart
(they use the interconnect, and XLA overlaps most of them with compute).

FLOPs are those of matrix products and convolutions (TPU programs express both as `convolution`; GPU programs call
cuBLAS and cuDNN for them, or fuse them into Triton GEMMs), counting only window taps that fall on real input, and
of Pallas kernels as their cost estimate states them; element-wise work is
not counted, as it rarely bounds a step that is not already bound by its bytes. Bytes are HBM traffic as the TPU
program moves it: arrays that memory-space assignment placed in on-chip memory cost nothing, slices and in-place
updates move only their slices, and a collective's transfers (fused with compute or not, once however many fusions
it was split over) count as collective bytes: what one device receives over a ring of its group (`received_bytes`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator

_ITEMSIZE = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
             "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# dtype, dims and the optional layout, whose S(n), n > 0, names a memory space other than HBM: on TPUs 1 is the
# on-chip memory that memory-space assignment fills, 2, 4 and 6 scalar and sync memories (host memory, 5, does not
# appear in our programs)
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_ITEMSIZE, key=len, reverse=True)) + r")\[([0-9,]*)\](\{[^}]*\})?")
_ON_CHIP = re.compile(r"S\([1-9]\d*\)")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%?([\w.\-]+) = (.*)$")
_FREE = frozenset({"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id",
                   "replica-id", "opt-barrier", "iota"})
# Ops that read only their result's worth of their first operand (a slice of it), and the in-place update
_SLICING = frozenset({"dynamic-slice", "slice", "gather"})
_UPDATE = "dynamic-update-slice"
# TPU custom calls that only reserve or reinterpret a buffer
_TARGET = re.compile(r'custom_call_target="(AllocateBuffer|ConcatBitcast)"')
# A Pallas kernel's FLOPs, from what its pallas_call stated in the custom call's backend config: a TPU kernel's cost
# estimate, or a Triton kernel's metadata (Pallas drops the cost estimate of those; model/attention_gpu.py passes
# its figures as metadata, written as `\22` for the JSON's quotes)
_KERNEL_FLOPS = re.compile(r'custom_call_target="tpu_custom_call".*"cost_estimate":\{"flops":"(\d+)"'
                           r'|custom_call_target="__gpu\$xla\.gpu\.triton".*serialized_metadata = "\{\\22flops\\22: '
                           r'\\22(\d+)\\22')
# GPU library calls: cuBLAS/cuBLASLt GEMMs (a dot whose dimension numbers are in the call's backend config) and cuDNN
# convolutions (a convolution's window and dim_labels as attributes). Each returns (result, workspace): the workspace
# is scratch, not traffic.
_GEMM = re.compile(r'custom_call_target="__cublas\$(gemm|lt\$matmul)')
_CUDNN_CONV = re.compile(r'custom_call_target="__cudnn\$conv')
_LIBRARY = re.compile(r'custom_call_target="(__cublas|__cudnn)')
_COLLECTIVE = re.compile(r"^(all-gather|all-reduce|reduce-scatter|collective-permute|all-to-all|collective-broadcast)")
_ASYNC_DONE = re.compile(r"-done$")
# Replica groups as XLA prints them: named mesh axes, explicit device lists, or an iota of [groups, size]
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}")
_LISTED_GROUPS = re.compile(r"replica_groups=\{\{([\d,]*)\}")
_IOTA_GROUPS = re.compile(r"replica_groups=\[\d+,(\d+)\]<=")


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str  # the result type, e.g. "f32[8,16]{1,0}" or a tuple "(f32[8]{0}, s32[])"
    opcode: str
    operands: tuple[str, ...]
    attributes: str
    arguments: str  # the text between the parentheses, e.g. a constant's value
    root: bool = False  # the computation's ROOT (its result)


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
    return sum(math.prod(dims_of(dims)) * _ITEMSIZE[dtype] for dtype, dims, _ in _ARRAY.findall(shape))


def hbm_bytes(shape: str) -> int:
    """Bytes of the arrays of a type string that live in HBM: memory-space assignment places some operands in
    on-chip memory (layout `S(1)`), and reading those costs no HBM bandwidth."""
    return sum(math.prod(dims_of(dims)) * _ITEMSIZE[dtype] for dtype, dims, layout in _ARRAY.findall(shape)
               if not _ON_CHIP.search(layout))


def on_chip(shape: str) -> bool:
    """Whether an array type's layout places it in on-chip memory."""
    match = _ARRAY.search(shape)
    return bool(match and _ON_CHIP.search(match.group(3) or ""))


def _tuple_elements(shape: str) -> list[str]:
    """The top-level elements of a tuple type string."""
    elements, depth, start = [], 0, 1
    for i, char in enumerate(shape):
        depth += {"(": 1, "{": 1, "[": 1, ")": -1, "}": -1, "]": -1}.get(char, 0)
        if (char == "," and depth == 1) or (char == ")" and depth == 0):
            elements.append(shape[start:i].strip())
            start = i + 1
    return elements


def group_size(attributes: str) -> int | None:
    """Devices in each replica group of a collective; None where the groups are not printed (all devices)."""
    if match := _MESH_GROUPS.search(attributes):
        sizes = {axis: int(size) for axis, size in re.findall(r"'([^']+)'=(\d+)", match.group(1))}
        return math.prod(sizes[axis] for axis in re.findall(r"'([^']+)'", match.group(2)))
    if match := _LISTED_GROUPS.search(attributes):
        return len(match.group(1).split(","))
    if match := _IOTA_GROUPS.search(attributes):
        return int(match.group(1))
    return None


def _piece_of(instruction: Instruction) -> str | None:
    """What names the collective that `instruction` is a piece of, where a TPU program split one collective over a
    chain of "async collective fusions" (each piece a copy of it: its channel id and result); None for a whole one."""
    if "async_collective_fusion_config" not in instruction.attributes:
        return None
    return f"{_attribute(instruction.attributes, 'channel_id')} {re.sub(r'{[^}]*}', '', instruction.shape)}"


def received_bytes(instruction: Instruction, scatter: bool = False) -> float:
    """Bytes one device receives for a collective over a group of n, on a ring (as ICI collectives run): an
    all-gather or all-to-all the other n-1 shards of its result, a reduce-scatter n-1 partial results, an all-reduce
    a reduce-scatter then an all-gather of its result, a permute its result. `scatter`: an all-reduce that a TPU
    "all-reduce-scatter" fusion slices at once, a reduce-scatter in all but name. Without printed groups, the
    result's bytes once."""
    shape = instruction.shape
    if instruction.opcode in ("all-gather-start", "collective-permute-start"):  # (operands, results, [contexts])
        shape = _tuple_elements(shape)[1]
    result = array_bytes(shape)
    if instruction.opcode.startswith("collective-"):
        return result
    n = group_size(instruction.attributes)
    if n is None:
        return result
    if instruction.opcode.startswith("reduce-scatter"):
        return (n - 1) * result
    if instruction.opcode.startswith("all-reduce") and not scatter:
        return 2 * (n - 1) / n * result
    return (n - 1) / n * result


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
            shape, rest = _split_type(match.group(3))
            current.append(Instruction(match.group(2), shape, *_call(rest), root=bool(match.group(1))))
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


def _attribute(attributes: str, name: str) -> str | None:
    match = re.search(rf"\b{name}=(%?[\w.\-]+|\{{[^}}]*\}})", attributes)
    return match.group(1).lstrip("%") if match else None


def traffic(instruction: Instruction, shapes: dict[str, str]) -> float:
    """HBM bytes a top-level op other than a fusion reads and writes."""
    op, operands = instruction.opcode, [shapes.get(o, "") for o in instruction.operands]
    rest = sum(hbm_bytes(o) for o in operands[1:])
    if op in _SLICING:
        read = 0 if on_chip(operands[0]) else array_bytes(instruction.shape)
        return read + rest + hbm_bytes(instruction.shape)
    if op == _UPDATE:  # in place: the update is read, and written into the first operand's buffer
        return (0 if on_chip(operands[0]) else array_bytes(operands[1])) + rest
    arrays = [m.group(0) for m in _ARRAY.finditer(instruction.shape)]
    if op == "copy-start" and arrays:  # result (destination, source, context): one read of the source, one write
        return hbm_bytes(operands[0]) + hbm_bytes(arrays[0])
    if op == "slice-start" and len(arrays) > 1:  # result ((source), slice, context): the slice read, then written
        return (0 if on_chip(operands[0]) else array_bytes(arrays[1])) + hbm_bytes(arrays[1])
    if op == "custom-call" and _TARGET.search(instruction.attributes):
        return 0.0
    if op == "custom-call" and _LIBRARY.search(instruction.attributes):
        return hbm_bytes(library_result(instruction)) + sum(hbm_bytes(o) for o in operands)
    return hbm_bytes(instruction.shape) + sum(hbm_bytes(o) for o in operands)


def library_result(instruction: Instruction) -> str:
    """A cuBLAS or cuDNN call's result type without its workspace (the last element of its result tuple)."""
    if not instruction.shape.startswith("("):
        return instruction.shape
    return _tuple_elements(instruction.shape)[0]


def _users(body: list[Instruction]) -> dict[str, list[tuple[Instruction, int]]]:
    """{name: [(instruction using it, operand position)]} of a computation."""
    users: dict[str, list[tuple[Instruction, int]]] = {}
    for i in body:
        for position, operand in enumerate(i.operands):
            users.setdefault(operand, []).append((i, position))
    return users


def _read_of(name: str, users: dict[str, list[tuple[Instruction, int]]], computations: dict[str, list[Instruction]],
             updated: frozenset[str] = frozenset()) -> float | None:
    """Bytes the uses of `name` in a fused computation read of it: a slice its size, an in-place update (one of
    `updated`), a collective or the result tuple nothing, a nested fusion what its own uses read; None when some
    use reads it whole."""
    total = 0.0
    for user, position in users.get(name, []):
        inner: float | None = None
        if user.opcode == "bitcast":
            inner = _read_of(user.name, users, computations, updated)
        elif user.opcode == "fusion" and (nested := computations.get(_attribute(user.attributes, "calls") or "")):
            parameter = next((i.name for i in nested if i.opcode == "parameter" and i.arguments == str(position)),
                             None)
            inner = _read_of(parameter, _users(nested), computations) if parameter else None
        elif position == 0 and user.opcode in _SLICING:
            inner = array_bytes(user.shape)
        elif (position == 0 and user.name in updated) or _COLLECTIVE.match(user.opcode) or \
                (user.root and user.opcode == "tuple"):
            inner = 0.0  # updated in place, sent by a collective's DMA (collective bytes), or passed through
        if inner is None:
            return None
        total += inner
    return total


def fusion_traffic(instruction: Instruction, computations: dict[str, list[Instruction]],
                   shapes: dict[str, str]) -> float:
    """HBM bytes a fusion reads and writes: of each operand what the fused code reads (its slices only, when it is
    only sliced; nothing when it is only updated in place), of each result what is written (an in-place update
    writes its update only). Operands and results in on-chip memory cost nothing."""
    body = computations[_attribute(instruction.attributes, "calls") or ""]
    by_name = {i.name: i for i in body}

    def through_bitcasts(name: str) -> Instruction:
        instruction = by_name[name]
        while instruction.opcode == "bitcast":
            instruction = by_name[instruction.operands[0]]
        return instruction

    root = next((i for i in body if i.root), body[-1])
    results = [through_bitcasts(o) for o in root.operands] if root.opcode == "tuple" else [through_bitcasts(root.name)]
    updated = frozenset(r.name for r in results
                        if r.opcode == _UPDATE and through_bitcasts(r.operands[0]).opcode == "parameter")
    parameters = {int(i.arguments): i.name for i in body if i.opcode == "parameter"}
    users = _users(body)
    moved = 0.0
    for index, operand in enumerate(instruction.operands):
        shape = shapes.get(operand, "")
        read = _read_of(parameters[index], users, computations, updated) if index in parameters and \
            not on_chip(shape) else None
        moved += hbm_bytes(shape) if read is None else min(read, array_bytes(shape))
    outer = [m.group(0) for m in _ARRAY.finditer(instruction.shape)]
    if len(outer) != len(results):  # a nested tuple: count the result whole
        return moved + hbm_bytes(instruction.shape)
    for result, shape in zip(results, outer, strict=True):
        # A collective's result is written by its DMA (collective bytes); a parameter's is its aliased buffer.
        if not (on_chip(shape) or _COLLECTIVE.match(result.opcode) or result.opcode == "parameter"):
            moved += array_bytes(by_name[result.operands[1]].shape if result.name in updated else shape)
    return moved


def _constant(instruction: Instruction | None) -> int | None:
    if instruction is None or instruction.opcode != "constant":
        return None
    match = re.match(r"\s*(-?\d+)\s*$", instruction.arguments)
    return int(match.group(1)) if match else None


def _tuple_index(instruction: Instruction | None) -> int | None:
    """k of a `get-tuple-element(...), index=k`."""
    if instruction is None or instruction.opcode != "get-tuple-element":
        return None
    return int(_attribute(instruction.attributes, "index") or -1)


def trip_count(loop: Instruction, computations: dict[str, list[Instruction]], caller: list[Instruction]) -> int:
    """A while loop's trip count: XLA's `known_trip_count` when it gives one, else that of a counter compared
    `i < N` in the condition, started from the constant the loop's initial tuple holds (0 if not a constant) and
    stepped by the constant the body adds (1 if not found: XLA's collective matmuls step by 2); 1 when no such
    counter is found."""
    match = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop.attributes)
    if match:
        return int(match.group(1))
    condition = computations.get(_attribute(loop.attributes, "condition") or "", [])
    named = {i.name: i for i in condition}
    root = next((i for i in condition if i.root), None)
    if root is None or root.opcode != "compare" or "direction=LT" not in root.attributes:
        return 1
    counter, limit = (named.get(o) for o in root.operands)
    index, end = _tuple_index(counter), _constant(limit)
    if index is None or end is None:
        return 1
    body = computations.get(_attribute(loop.attributes, "body") or "", [])
    in_body = {i.name: i for i in body}
    body_root = next((i for i in body if i.root), None)
    step = 1
    if body_root is not None and body_root.opcode == "tuple" and index < len(body_root.operands):
        update = in_body.get(body_root.operands[index])
        if update is not None and update.opcode == "add":
            terms = [in_body.get(o) for o in update.operands]
            steps = [_constant(t) for t in terms if _tuple_index(t) != index]
            if len(steps) == 1 and steps[0]:
                step = steps[0]
    in_caller = {i.name: i for i in caller}
    init = in_caller.get(loop.operands[0]) if loop.operands else None
    start = _constant(in_caller.get(init.operands[index])) if init and init.opcode == "tuple" and \
        index < len(init.operands) else None
    return max(0, -(((start or 0) - end) // step))


def _window(attributes: str) -> dict[str, list[str]]:
    """A convolution's window fields, per spatial dimension: {"size": ["2"], "pad": ["1_1"], ...}."""
    text = (_attribute(attributes, "window") or "{}").strip("{}")
    return {key: value.split("x") for key, value in re.findall(r"(\w+)=([\w]+)", text)}


def valid_taps(in_size: int, out_size: int, size: int, stride: int = 1, low: int = 0, lhs_dilate: int = 1,
               rhs_dilate: int = 1) -> int:
    """(output position, kernel tap) pairs of one spatial dimension whose input is real, not padding or the holes
    of a dilated input: XLA writes some products as convolutions whose windows lie mostly in padding (two matrix
    products side by side as a padded size-2 window), and only the real taps are work."""
    last = (in_size - 1) * lhs_dilate
    count = 0
    for k in range(size):
        offset = k * rhs_dilate - low  # the input position of output 0's tap k
        first, final = max(0, -(offset // stride)), min(out_size - 1, (last - offset) // stride)
        if lhs_dilate == 1:
            count += max(0, final - first + 1)
        else:
            count += sum((o * stride + offset) % lhs_dilate == 0 for o in range(first, final + 1))
    return count


def convolution_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    """2 x output elements x input features per group x the real kernel taps per output position (a dot is a
    convolution without spatial dimensions on TPU)."""
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", instruction.attributes)
    lhs = _ARRAY.search(shapes.get(instruction.operands[0], ""))
    kernel = _ARRAY.search(shapes.get(instruction.operands[1], ""))
    out = _ARRAY.search(instruction.shape)
    if not (labels and lhs and kernel and out):
        return 0.0
    lhs_labels, kernel_labels, out_labels = labels.groups()
    lhs_dims, kernel_dims, out_dims = dims_of(lhs.group(2)), dims_of(kernel.group(2)), dims_of(out.group(2))
    window = _window(instruction.attributes)
    per_output = float(kernel_dims[kernel_labels.index("i")])
    for d, label in enumerate(sorted(c for c in kernel_labels if c.isdigit())):

        def field(name: str, default: str, d: int = d) -> str:
            values = window.get(name)
            return values[d] if values else default

        low = int(field("pad", "0_0").split("_")[0])
        out_size = out_dims[out_labels.index(label)]
        taps = valid_taps(lhs_dims[lhs_labels.index(label)], out_size, kernel_dims[kernel_labels.index(label)],
                          int(field("stride", "1")), low, int(field("lhs_dilate", "1")), int(field("rhs_dilate", "1")))
        per_output *= taps / out_size
    groups = int(_attribute(instruction.attributes, "batch_group_count") or 1)
    return 2.0 * math.prod(out_dims) * per_output / groups


def dot_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    """2 x output elements x the contracted size."""
    contracting = _attribute(instruction.attributes, "lhs_contracting_dims")
    return _product_flops(instruction, shapes, contracting.strip("{}").split(",") if contracting else None)


def gemm_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    """A cuBLAS GEMM's FLOPs, as dot_flops: its contracted dimensions are in its backend config."""
    match = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', instruction.attributes)
    return _product_flops(dataclasses.replace(instruction, shape=library_result(instruction)), shapes,
                          re.findall(r"\d+", match.group(1)) if match else None)


def _product_flops(instruction: Instruction, shapes: dict[str, str], contracting: list[str] | None) -> float:
    lhs = _ARRAY.search(shapes.get(instruction.operands[0], ""))
    out = _ARRAY.search(instruction.shape)
    if not (lhs and out and contracting is not None):
        return 0.0
    lhs_dims = dims_of(lhs.group(2))
    contracted = math.prod(lhs_dims[int(d)] for d in contracting if d)
    return 2.0 * math.prod(dims_of(out.group(2))) * contracted


class Roofline:
    """Costs of a parsed module's computations against one chip's peak FLOP/s and bytes/s."""

    def __init__(self, hlo_text: str, peak_flops: float, bandwidth: float) -> None:
        self.computations, self.entry = parse_module(hlo_text)
        self.peak, self.bandwidth = peak_flops, bandwidth
        self._fused_costs: dict[str, tuple[float, tuple[tuple[str | None, float], ...]]] = {}

    def total(self) -> Cost:
        return self.cost(self.entry)

    def cost(self, computation: str) -> Cost:
        """The roofline cost of running `computation` once."""
        total = Cost()
        for _, cost, times in self.ops(computation):
            total.add(cost, times)
        return total

    def ops(self, computation: str | None = None, times: float = 1.0) -> Iterator[tuple[Instruction, Cost, float]]:
        """(op, cost of one execution, executions per run of `computation`) of every op that costs anything, loop
        bodies and calls entered (a conditional's costliest branch): the terms `cost` sums, for a breakdown."""
        instructions = self.computations[computation or self.entry]
        shapes = {i.name: i.shape for i in instructions}
        # The pieces of a collective that a TPU program split over a chain of fusions (`_piece_of`) count once per
        # run of this computation.
        counted: set[str] = set()
        for instruction in instructions:
            op = instruction.opcode
            if op == "while":
                trips = trip_count(instruction, self.computations, instructions)
                yield from self.ops(_attribute(instruction.attributes, "body"), times * trips)
            elif op in ("call", "async-start") and (called := _attribute(instruction.attributes, "calls")):
                yield from self.ops(called, times)
            elif op == "conditional":
                branches = re.findall(r"%([\w.\-]+)", _attribute(instruction.attributes, "branch_computations") or "")
                if branches:
                    yield from self.ops(max(branches, key=lambda b: self.cost(b).seconds), times)
            elif not (op in _FREE or _ASYNC_DONE.search(op)):
                yield instruction, self._leaf(instruction, shapes, counted), times

    def _leaf(self, instruction: Instruction, shapes: dict[str, str], counted: set[str]) -> Cost:
        """One execution of an op that is neither a loop, a call nor a conditional; `counted`: the collectives
        (`_piece_of`) whose bytes earlier ops of the same computation already carry."""
        op = instruction.opcode
        called = _attribute(instruction.attributes, "calls") if op == "fusion" else None
        # TPU programs fuse collectives with the compute they overlap ("async collective fusions"): count both.
        flops, collectives = self._fused(called) if called else (self._op_flops(instruction, shapes), ())
        if _COLLECTIVE.match(op):
            collectives = ((_piece_of(instruction), received_bytes(instruction)),)
        collective = sum(size for piece, size in collectives if piece is None or piece not in counted)
        counted.update(piece for piece, _ in collectives if piece is not None)
        if _COLLECTIVE.match(op):
            return Cost(collective_bytes=collective)
        moved = fusion_traffic(instruction, self.computations, shapes) if called else traffic(instruction, shapes)
        compute, memory = flops / self.peak, moved / self.bandwidth
        seconds = max(compute, memory)
        return Cost(flops=flops, bytes=moved, collective_bytes=collective, seconds=seconds,
                    flops_bound_seconds=seconds if compute >= memory else 0.0)

    def _op_flops(self, instruction: Instruction, shapes: dict[str, str]) -> float:
        if instruction.opcode == "convolution":
            return convolution_flops(instruction, shapes)
        if instruction.opcode == "dot":
            return dot_flops(instruction, shapes)
        if instruction.opcode == "custom-call" and (match := _KERNEL_FLOPS.search(instruction.attributes)):
            return float(match.group(1) or match.group(2))
        if instruction.opcode == "custom-call" and _GEMM.search(instruction.attributes):
            return gemm_flops(instruction, shapes)
        if instruction.opcode == "custom-call" and _CUDNN_CONV.search(instruction.attributes):
            return convolution_flops(dataclasses.replace(instruction, shape=library_result(instruction)), shapes)
        return 0.0

    def _fused(self, computation: str) -> tuple[float, tuple[tuple[str | None, float], ...]]:
        """(FLOPs, (`_piece_of`, bytes) of each collective) inside a fused computation, nested fusions included."""
        if computation not in self._fused_costs:
            instructions = self.computations[computation]
            shapes = {i.name: i.shape for i in instructions}
            flops, collectives = 0.0, []
            for i in instructions:
                if i.opcode == "fusion" and (called := _attribute(i.attributes, "calls")):
                    inner_flops, inner = self._fused(called)
                    flops += inner_flops
                    collectives.extend(inner)
                elif _COLLECTIVE.match(i.opcode):
                    scatter = computation.startswith("all-reduce-scatter")
                    collectives.append((_piece_of(i), received_bytes(i, scatter=scatter)))
                else:
                    flops += self._op_flops(i, shapes)
            self._fused_costs[computation] = (flops, tuple(collectives))
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
