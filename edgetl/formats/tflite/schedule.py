"""The operator order of a converted TFLite training model: weight-only work runs when it is needed.

    from edgetl.formats.tflite import schedule as tflite_schedule
    model = tflite_schedule.reorder(model)             # bytes -> bytes: same ops, same results, later weight work
    tflite_schedule.arena_peak(model, "train")          # largest sum of intermediates alive at once, in bytes

The TFLite converter places every op as early as its inputs allow, and the interpreter runs the ops in that
order, so memory follows it. Work that needs only the weights (reading a variable, transposing a kernel to its
conv layout, the optimizer's products of the moments with constants) thus runs before the forward pass, and each
result waits in memory through the whole forward and backward pass. On MobileNetV2 ``mobiletl:5`` at batch 8
that was 14 MiB of a 57 MiB peak of intermediates.

``reorder`` moves each op that depends on none of the signature's inputs (neither the batch nor the learning
rate) to just before its first consumer; the ops on a variable keep their order, so every read still sees the
value it saw before and the results are bit for bit the same. The batch's path keeps the converter's order:
MobileTL's masks are made as early as possible, which is the point of them. Ops that use the learning rate stay
where they are too: moving AdamW's decay next to its step made the interpreter grow its arena in many
increments during the first step, each a copy, and the peak rose (216 against 166 MiB of resident memory).
"""

from __future__ import annotations

import math

SIGNATURES = ("train", "gradients")  # the subgraphs that train; inference has no weight-only work to move
_ITEM_BYTES = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8}  # TensorType -> bytes (others: 4)


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


class _Graph:
    """One subgraph's operators as index lists, and the dependencies an order must keep."""

    def __init__(self, model, index: int):
        schema = _schema()
        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.graph = g = model.subgraphs[index]
        self.ops = list(g.operators or [])
        self.names = [names.get(max(model.operatorCodes[op.opcodeIndex].builtinCode,
                                    model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)) for op in self.ops]
        self.ins = [[int(t) for t in (op.inputs if op.inputs is not None else []) if t >= 0] for op in self.ops]
        self.outs = [[int(t) for t in (op.outputs if op.outputs is not None else []) if t >= 0] for op in self.ops]
        self.inputs = {int(t) for t in (g.inputs if g.inputs is not None else [])}
        self.outputs = {int(t) for t in (g.outputs if g.outputs is not None else [])}
        self.const = {t for t, tensor in enumerate(g.tensors)
                      if model.buffers[tensor.buffer].data is not None and len(model.buffers[tensor.buffer].data)}
        producer = {t: k for k, outs in enumerate(self.outs) for t in outs}
        self.succ = [set() for _ in self.ops]
        variable, last_touch = {}, {}
        for k, op in enumerate(self.ops):
            if self.names[k] == "VAR_HANDLE":
                variable[self.outs[k][0]] = (op.builtinOptions.container, op.builtinOptions.sharedName)
            for t in self.ins[k]:
                if t in producer:
                    self.succ[producer[t]].add(k)
                if t in variable:  # reads and assignments of one variable keep their order
                    if variable[t] in last_touch:
                        self.succ[last_touch[variable[t]]].add(k)
                    last_touch[variable[t]] = k

    def nbytes(self, t: int) -> int:
        tensor = self.graph.tensors[t]
        shape = [] if tensor.shape is None else [int(d) for d in tensor.shape]
        return math.prod(shape) * _ITEM_BYTES.get(tensor.type, 4)

    def order(self) -> list[int]:
        """The converter's order with each op that needs no signature input moved to just before its first
        consumer (a sort key per op: the consumer's key, nudged before it; ties keep the converter's order)."""
        n = len(self.ops)
        needs_input = [False] * n
        for k in range(n):  # the converter's order is topological: predecessors are settled first
            needs_input[k] = needs_input[k] or any(t in self.inputs for t in self.ins[k])
            for s in self.succ[k]:
                needs_input[s] = needs_input[s] or needs_input[k]
        keys: list[tuple] = [(k, 1.0) for k in range(n)]
        for k in reversed(range(n)):
            if needs_input[k] or not self.succ[k] or self.names[k] == "CALL_ONCE":
                continue
            first = min(keys[s] for s in self.succ[k])
            keys[k] = (*first[:-1], first[-1] - 0.5, k, 1.0)
        return sorted(range(n), key=keys.__getitem__)

    def peak(self, order: list[int]) -> int:
        """Largest sum of bytes of the intermediates (not constants) alive at once, running ``order``."""
        first, last = {t: 0 for t in self.inputs}, {}
        for i, k in enumerate(order):
            for t in self.outs[k]:
                first.setdefault(t, i)
            for t in self.ins[k] + self.outs[k]:
                last[t] = i
        for t in self.inputs | self.outputs:
            last[t] = len(order)
        change = [0] * (len(order) + 2)
        for t, i in first.items():
            if t not in self.const:
                change[i] += self.nbytes(t)
                change[last.get(t, i) + 1] -= self.nbytes(t)
        live = peak = 0
        for c in change:
            live += c
            peak = max(peak, live)
        return peak


def _subgraphs(model, signatures) -> dict[str, int]:
    return {s.signatureKey.decode(): s.subgraphIndex for s in model.signatureDefs or []
            if s.signatureKey.decode() in signatures}


def _load(model: bytes):
    return _schema().ModelT.InitFromPackedBuf(bytearray(model), 0)


def reorder(model: bytes, signatures=SIGNATURES) -> bytes:
    """``model`` with the operators of ``signatures`` reordered (see the module docstring)."""
    import flatbuffers

    tree = _load(model)
    for index in _subgraphs(tree, signatures).values():
        graph = _Graph(tree, index)
        graph.graph.operators = [graph.ops[k] for k in graph.order()]
    builder = flatbuffers.Builder(len(model) + 2**16)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def arena_peak(model: bytes, signature: str = "train") -> int:
    """The largest sum of bytes of ``signature``'s intermediates alive at once, in the model's own op order.

    An estimate of the interpreter's arena: it lays the same tensors out by the same lifetimes, but reads of
    variables live outside it, and it may fragment."""
    tree = _load(model)
    index = _subgraphs(tree, (signature,))
    if not index:
        raise KeyError(f"no signature {signature!r} in the model")
    graph = _Graph(tree, index[signature])
    return graph.peak(list(range(len(graph.ops))))
