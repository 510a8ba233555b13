"""Where a TFLite signature spends its time, operator by operator, in the order the interpreter runs them.

    from edgetl.formats.tflite import profile as tflite_profile
    ops = tflite_profile.op_times(model_bytes, "train", threads=2)       # [OpTime], execution order, each alone
    spans = tflite_profile.prefix_seconds(model_bytes, "train", [0, 120, 300], threads=2)  # the first k ops, in place
    step = tflite_profile.signature_seconds(model_bytes, "train", threads=2)   # the whole signature
    tflite_profile.layer_of(ops[200].name)                                  # ("features.14.conv.1.0", "backward")

TFLite's Python interpreter has no op profiler, so time is measured two ways:

- alone (``op_times``): each operator is cut out of the subgraph into a model of its own (its constants kept, its
  other inputs made inputs, filled with random values) and timed there with the interpreter's default delegates
  (XNNPACK) at ``threads``. Whether XNNPACK takes an operator depends on the operator alone (and on which of its
  inputs are constants), so each one runs where it runs in the whole model. Variable operators are timed with their
  variable: ``READ_VARIABLE`` as a model that assigns the variable once (``CALL_ONCE``) and reads it,
  ``ASSIGN_VARIABLE`` as a model that assigns it; ``VAR_HANDLE`` and ``CALL_ONCE`` count as nothing. Alone, an
  operator finds its inputs in cache: memory-bound operators take up to three times as long in the step.
- in place (``prefix_seconds``): the subgraph cut after its first k operators, run whole; the difference between
  two cuts is what the operators between them cost in the step, caches and delegate partitions as they are.

Operator names carry the lowering's name scopes (``features.14.conv.1.0/...``, its backward under ``.../grad``),
so :func:`layer_of` maps each operator to the layer whose forward or backward it computes.
"""

from __future__ import annotations

import copy
import functools
import statistics
import time
from dataclasses import dataclass

import numpy as np

from .schedule import _Graph, _load, _schema, _subgraphs

FREE = ("VAR_HANDLE", "CALL_ONCE")


@dataclass
class OpTime:
    index: int  # position in the subgraph's execution order
    op: str  # builtin name
    inputs: list[str]  # shapes, "c" marks a constant
    output: str  # the first output's shape
    name: str  # the first output tensor's name (name scopes of the lowering)
    delegated: bool  # XNNPACK took it
    seconds: float


def _shape(tensor) -> str:
    return "x".join(str(int(d)) for d in (tensor.shape if tensor.shape is not None else [])) or "scalar"


class _Cutter:
    """Builds one-operator models out of a subgraph."""

    def __init__(self, tree, graph: _Graph):
        self.tree, self.g, self.s = tree, graph, _schema()

    def _model(self, subgraphs, codes) -> bytes:
        import flatbuffers

        s = self.s
        m = s.ModelT()
        m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, codes, subgraphs, self.buffers
        b = flatbuffers.Builder(1 << 16)
        b.Finish(m.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    def _tensor(self, t: int, remap: dict, tensors: list, const: bool | None = None) -> int:
        if t not in remap:
            tt = copy.copy(self.g.graph.tensors[t])
            if (t in self.g.const) if const is None else const:
                self.buffers.append(self.tree.buffers[tt.buffer])
                tt.buffer = len(self.buffers) - 1
            else:
                tt.buffer = 0
            remap[t] = len(tensors)
            tensors.append(tt)
        return remap[t]

    def _code(self, name: str):
        s = self.s
        code = s.OperatorCodeT()
        code.builtinCode = getattr(s.BuiltinOperator, name)
        code.deprecatedBuiltinCode = min(code.builtinCode, 127)
        code.version = 1
        return code

    def _op(self, code: int, inputs, outputs, options_type=0, options=None):
        op = self.s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = code, list(inputs), list(outputs)
        op.builtinOptionsType, op.builtinOptions = options_type, options
        return op

    def cut(self, k: int) -> bytes | None:
        """A model running operator ``k`` alone (None for the operators that count as nothing)."""
        g, s = self.g, self.s
        self.buffers = [s.BufferT()]
        name = g.names[k]
        if name in FREE:
            return None
        if name in ("READ_VARIABLE", "ASSIGN_VARIABLE"):
            return self._variable(k)
        op = copy.copy(g.ops[k])
        remap, tensors = {}, []
        op.inputs = [self._tensor(int(t), remap, tensors) if t >= 0 else -1 for t in op.inputs]
        op.outputs = [self._tensor(int(t), remap, tensors) for t in op.outputs]
        op.opcodeIndex = 0
        sub = s.SubGraphT()
        sub.tensors, sub.operators = tensors, [op]
        sub.inputs = [remap[t] for t in g.ins[k] if t not in g.const]
        sub.outputs = list(op.outputs)
        return self._model([sub], [self.tree.operatorCodes[g.ops[k].opcodeIndex]])

    def _variable(self, k: int) -> bytes:
        """READ_VARIABLE: read a variable that a CALL_ONCE assigned; ASSIGN_VARIABLE: assign one from an input."""
        g, s = self.g, self.s
        read = g.names[k] == "READ_VARIABLE"
        value = g.outs[k][0] if read else g.ins[k][1]
        handle_opts = s.VarHandleOptionsT()
        handle_opts.container, handle_opts.sharedName = b"", f"profiled{k}".encode()
        codes = [self._code("VAR_HANDLE"), self._code("ASSIGN_VARIABLE"), self._code("READ_VARIABLE"),
                 self._code("CALL_ONCE")]

        def resource(tensors):
            t = s.TensorT()
            t.shape, t.type, t.buffer, t.name = [], s.TensorType.RESOURCE, 0, b"handle"
            tensors.append(t)
            return len(tensors) - 1

        def assigning(const: bool):
            remap, tensors = {}, []
            h = resource(tensors)
            v = self._tensor(value, remap, tensors, const=const)
            if const:  # zeros of the variable's size: the init subgraph needs no input
                nbytes = _Graph.nbytes(g, value)
                buf = s.BufferT()
                buf.data = np.zeros(nbytes, np.uint8)
                self.buffers[tensors[v].buffer] = buf
            sub = s.SubGraphT()
            sub.tensors = tensors
            sub.operators = [self._op(0, [], [h], s.BuiltinOptions.VarHandleOptions, handle_opts),
                             self._op(1, [h, v], [])]
            sub.inputs, sub.outputs = ([] if const else [v]), []
            return sub

        if not read:
            return self._model([assigning(const=False)], codes)
        init = assigning(const=True)
        remap, tensors = {}, []
        h = resource(tensors)
        out = self._tensor(value, remap, tensors, const=False)
        once = s.CallOnceOptionsT()
        once.initSubgraphIndex = 1
        sub = s.SubGraphT()
        sub.tensors = tensors
        sub.operators = [self._op(3, [], [], s.BuiltinOptions.CallOnceOptions, once),
                         self._op(0, [], [h], s.BuiltinOptions.VarHandleOptions, handle_opts),
                         self._op(2, [h], [out])]
        sub.inputs, sub.outputs = [], [out]
        return self._model([sub, init], codes)


def _fill(interpreter, rng) -> None:
    for d in interpreter.get_input_details():
        shape, dtype = d["shape"], d["dtype"]
        if dtype == np.bool_:
            value = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.floating):
            value = rng.standard_normal(shape).astype(dtype)
        else:
            value = np.zeros(shape, dtype)
        interpreter.set_tensor(d["index"], value)


def _timed(invoke, budget_s: float, least: int, clock=time.perf_counter) -> float:
    """The fastest of at least ``least`` calls of ``invoke`` taking about ``budget_s`` seconds, after a warm-up: other
    processes only ever slow a call down."""
    invoke()
    times, spent = [], 0.0
    while len(times) < least or spent < budget_s:
        t0 = clock()
        invoke()
        times.append(clock() - t0)
        spent += times[-1]
        if len(times) >= 200:
            break
    return min(times)


def _interpreter(model: bytes, threads: int):
    from ...runtime.tflite_runner import make_interpreter  # as the device runner makes it

    return make_interpreter(threads, model_content=model)


def op_times(model: bytes, signature: str = "train", threads: int = 1, budget_s: float = 0.02,
             least: int = 5, seed: int = 0, clock=time.perf_counter) -> list[OpTime]:
    """Every operator of ``signature``'s subgraph, in execution order, with its time run alone (see the module
    docstring). The interpreter's own cost of a call, measured on an empty model, is subtracted. ``clock``:
    ``time.thread_time`` at one thread counts this thread's CPU time only, which other processes do not disturb."""
    tree = _load(model)
    index = _subgraphs(tree, (signature,))
    if not index:
        raise KeyError(f"no signature {signature!r} in the model")
    graph = _Graph(tree, index[signature])
    cutter, rng = _Cutter(tree, graph), np.random.default_rng(seed)
    overhead = _call_overhead(threads, clock)
    out = []
    for k in range(len(graph.ops)):
        cut = cutter.cut(k)
        seconds, delegated = 0.0, False
        if cut is not None:
            interp = _interpreter(cut, threads)
            interp.allocate_tensors()
            _fill(interp, rng)
            delegated = any(d["op_name"] == "DELEGATE" for d in interp._get_ops_details())
            seconds = max(0.0, _timed(interp.invoke, budget_s, least, clock) - overhead)
        tensors = graph.graph.tensors
        first = graph.outs[k][0] if graph.outs[k] else None
        out.append(OpTime(k, graph.names[k],
                          [_shape(tensors[t]) + ("c" if t in graph.const else "") for t in graph.ins[k]],
                          _shape(tensors[first]) if first is not None else "",
                          tensors[first].name.decode() if first is not None else "", delegated, seconds))
    return out


def _call_overhead(threads: int, clock=time.perf_counter) -> float:
    """Seconds of one ``invoke`` of a model with one scalar ADD: what a cut model's time holds beyond its operator."""
    s = _schema()
    cutter = _Cutter.__new__(_Cutter)
    cutter.s, cutter.buffers = s, [s.BufferT()]
    tensors = []
    for name in (b"a", b"b", b"y"):
        t = s.TensorT()
        t.shape, t.type, t.buffer, t.name = [1], s.TensorType.FLOAT32, 0, name
        tensors.append(t)
    sub = s.SubGraphT()
    sub.tensors, sub.operators = tensors, [cutter._op(0, [0, 1], [2])]
    sub.inputs, sub.outputs = [0, 1], [2]
    interp = _interpreter(cutter._model([sub], [cutter._code("ADD")]), threads)
    interp.allocate_tensors()
    return min(_timed(interp.invoke, 0.02, 20, clock) for _ in range(3))


def layer_of(name: str) -> tuple[str, str] | None:
    """(layer, part) of an operator's output tensor name, part one of forward, backward, optimizer, running
    statistics; None for a name the lowering did not scope (a variable handle)."""
    path = name.split(";")[0].split("/")
    tape = path[0] == "gradient_tape"  # TensorFlow's own gradients (of a linear layer, say)
    path = path[1:] if tape else path
    if len(path) < 2 or path[1].isdigit() or "." not in path[0] and path[0] not in (
            "model", "loss", "optimizer", "classifier", "features"):
        return None  # unscoped, or a variable (its handle is named features/1/1/weight)
    if path[0] == "optimizer":
        return "optimizer", "optimizer"
    part = "backward" if tape or "grad" in path[1:-1] else "running statistics" if "running_stats" in path else "forward"
    return path[0], part


def prefix_seconds(model: bytes, signature: str, cuts: list[int], threads: int = 1, repeats: int = 7,
                   seed: int = 0, clock=time.perf_counter, progress=None) -> list[float]:
    """Seconds of running the first k operators of ``signature``'s subgraph (the fastest of ``repeats`` runs), for
    each k in ``cuts``, on random inputs (the learning rate 1e-3). ``progress(i)`` is called after each cut."""
    import flatbuffers

    tree = _load(model)
    index = _subgraphs(tree, (signature,))[signature]
    graph = tree.subgraphs[index]
    ops, outputs = list(graph.operators or []), [int(t) for t in graph.outputs]
    inputs = [int(t) for t in graph.inputs]
    last_use = {int(t): k for k, op in enumerate(ops) for t in (op.inputs if op.inputs is not None else [])}
    resource = _schema().TensorType.RESOURCE
    rng = np.random.default_rng(seed)
    out = []
    for i, k in enumerate(cuts):
        # what the rest of the step would read becomes an output: XNNPACK drops operators whose results nobody
        # reads, and a cut would move their time to the operators that read them
        made = {int(t) for op in ops[:k] for t in (op.outputs if op.outputs is not None else [])}
        graph.operators = ops[:k]
        graph.outputs = sorted(t for t in made if (t in outputs or last_use.get(t, -1) >= k)
                               and graph.tensors[t].type != resource)
        builder = flatbuffers.Builder(len(model) + 2**16)
        builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
        interp = _interpreter(bytes(builder.Output()), threads)
        wrapper = interp._interpreter
        wrapper.AllocateTensors(index)
        for t in inputs:
            tensor = graph.tensors[t]
            shape = [int(d) for d in tensor.shape] if tensor.shape is not None else []
            if tensor.type == _schema().TensorType.FLOAT32:
                name = tensor.name.decode()
                value = np.full(shape, 1e-3, np.float32) if "lr" in name else rng.standard_normal(shape, np.float32)
            else:
                value = np.zeros(shape, np.int32)
            wrapper.SetTensor(t, value, index)
        out.append(_timed(functools.partial(wrapper.Invoke, index), 0.0, repeats, clock))
        if progress:
            progress(i)
    graph.operators, graph.outputs = ops, np.array(outputs, np.int32)
    return out


def signature_seconds(model: bytes, signature: str = "train", threads: int = 1, steps: int = 5, seed: int = 0,
                      inputs: dict | None = None, clock=time.perf_counter) -> float:
    """Median seconds of one call of ``signature`` on random inputs (``inputs`` by name where given)."""
    interp = _interpreter(model, threads)
    runner = interp.get_signature_runner(signature)
    rng = np.random.default_rng(seed)
    feed = {}
    for name, d in runner.get_input_details().items():
        shape = [int(v) for v in d["shape"]] or [1]
        if np.issubdtype(d["dtype"], np.floating):
            feed[name] = (rng.standard_normal(shape) * (1e-3 if name == "lr" else 1.0)).astype(d["dtype"])
        else:
            feed[name] = np.zeros(shape, d["dtype"])
    feed.update(inputs or {})
    runner(**feed)  # the first call allocates and initializes the variables
    times = []
    for _ in range(steps):
        t0 = clock()
        runner(**feed)
        times.append(clock() - t0)
    return statistics.median(times)
