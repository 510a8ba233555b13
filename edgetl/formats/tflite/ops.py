"""TensorFlow ops whose gradients lower to TFLite builtins, with PyTorch's (and MobileTL's) backward.

    y = conv2d(x, w, b, stride=2, padding=1, depthwise=True, grads=(True, True, False))
    y = activation(x, "hardswish", masked=True, threshold=0.0)
    y, mean, var = batch_norm(x, weight, bias, eps=1e-5, grads=(True, True, True))   # batch statistics
    y = affine(x, scale, shift, grads=(True, False, True))                           # running statistics
    loss = cross_entropy(logits, labels)

Everything here is NHWC with TF-layout weights (``HWIO`` for convs, ``HW C 1`` for depthwise). The
TFLite converter has no builtin for TensorFlow's ``Conv2DBackpropFilter`` and
``DepthwiseConv2dNative*`` gradients, so these ops define their own with ``tf.custom_gradient``, built
from ops that are builtins (conv, depthwise conv, transpose conv, batch matmul, pad, transpose, sum), and
chosen for speed: the interpreter hands what XNNPACK supports to XNNPACK (multithreaded, AVX-512 or NEON), the
rest runs in TFLite's own kernels, and ``bench/step_ops.py`` times each operator in the step.

- a trained 1x1 conv (and a linear layer) is a BATCH_MATMUL, forward and backward: XNNPACK runs it with a weight
  that is a variable, where CONV_2D and FULLY_CONNECTED with a variable weight run in TFLite's own kernels at a
  fifth of the speed (see ``matmul``); a frozen conv stays a conv (XNNPACK's, with its constant weight);
- conv weight gradient: one matmul per kernel tap (a single matmul for 1x1);
- depthwise weight gradient: one depthwise conv, the batch moved into the channels and the output gradient as
  the filter (see ``_depthwise_weight_grad``);
- depthwise input gradient: the same conv with the kernel flipped (stride 1), or one small conv per output phase
  (stride 2, ``_depthwise_transposed``);
- a gradient nobody asked for (``grads``) is not built at all: frozen weights get none, and the first
  trained layer computes no input gradient.

Every sum over batch and space goes through ``channel_sum`` (and ``spatial_mean``), one axis at a time:
TFLite's SUM and MEAN kernels add a reduction's elements one after another into one float32 accumulator,
so a single reduction over N * H * W elements (100352 per channel at batch 8 and 112 x 112) drifts with the
count, where PyTorch's CPU batch norm computes its statistics at rounding level. Summed in one go,
MobileNetV2's first norms came out 8.7e-6 and 1.4e-4 from float64 at 224 x 224 (PyTorch float32: 1.3e-7 and
2.8e-7), the error grew layer after layer, 12359 ReLU6 mask elements turned for inputs near 0 (PyTorch: 54),
and the ``full`` training losses missed by 1.4e-4 and the gradients by 0.2 (PyTorch: 0.011). Summed axis by
axis, no accumulator takes more than max(N, H, W) terms and the export tracks PyTorch layer by layer
(gradients 0.011 from float64 where PyTorch's own are 0.007 to 0.011). The weight gradients of full convs
stay matmuls over N * H * W: their kernels measure 6e-6 there, a thousandth of what validation allows.

``batch_norm`` is PyTorch's training-mode batch norm (batch statistics), with its backward written out
(dx = gamma / sigma * (dy - mean(dy) - x_hat * mean(dy * x_hat)), rearranged so that x_hat is never made) so that
the backward's sums are staged as well; it also returns the batch mean and biased variance for the running
statistics.

Activations keep what their backward needs (:class:`Mask`): nothing of their own where the next layer keeps their
output anyway (a trained conv's input: the mask is computed from the output in the backward pass), else a boolean
mask made in the forward pass for ReLU, ReLU6, Hardsigmoid and MobileTL's Hard-Swish (``x > threshold``, the sign
approximation), and the input itself for exact Hard-Swish. TFLite has no bit type, so a kept mask costs a byte
per element here (a bit in PyTorch).

Every op's name carries its layer's name scope (the backward's under ``grad``), which the op profile reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import tensorflow as tf


def _scoped(backward):
    """``backward`` run in its forward's name scope, under ``grad``: every op of the model is named after its layer
    (``features.14.conv.1.0/grad/...``), which the op profile reads (:mod:`.profile`)."""
    scope = tf.get_current_name_scope()

    def run(*grads):
        with tf.name_scope(f"{scope}/grad/" if scope else "grad/"):
            return backward(*grads)

    return run


def channel_sum(x):
    """Per-channel sum of an NHWC tensor over batch and space, one axis at a time (see the module docstring)."""
    for axis in (2, 1, 0):  # W, H, N: each accumulator adds at most max(N, H, W) terms
        x = tf.reduce_sum(x, axis=axis)
    return x


def spatial_mean(x, keepdims: bool = False):
    """Per-image, per-channel mean of an NHWC tensor over space (global pooling), one axis at a time."""
    return tf.reduce_mean(tf.reduce_mean(x, axis=2, keepdims=keepdims), axis=1, keepdims=keepdims)


def _pad(x, p: int):
    return tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]]) if p else x


def _tap_grads(dy, x_shape, k: int, stride: int, padding: int):
    """(i, j, D): the output gradient placed where kernel tap (i, j) meets the input, shaped like the input,
    so that the sum of ``x * D`` over batch and space is that tap's weight gradient.

    Built from ``dy`` alone, on purpose: the TFLite converter schedules each op as early as its inputs
    allow, so slices of the input (the textbook form) would be made in the forward pass and held, k * k
    of them per conv, until the backward reached it.
    """
    if k == 1 and stride == 1 and padding == 0:  # a 1x1 conv: the gradient is already where the input is
        yield 0, 0, dy
        return
    _, h, w, _ = x_shape
    g = _dilate(dy, stride)  # g[s * o] = dy[o]: position o of the output read input row s * o + i - padding
    big = tf.pad(g, [[0, 0], [k - 1, max(0, padding + h - g.shape[1])], [k - 1, max(0, padding + w - g.shape[2])],
                     [0, 0]])
    for i in range(k):
        for j in range(k):
            top, left = padding - i + k - 1, padding - j + k - 1
            yield i, j, big[:, top:top + h, left:left + w, :]


def _dilate(g, stride: int):
    """Insert ``stride - 1`` zeros between the elements of the two spatial axes of ``g``."""
    if stride == 1:
        return g
    n, h, w, c = g.shape
    zeros = tf.zeros_like(g)
    g = tf.reshape(tf.stack([g] + [zeros] * (stride - 1), axis=3), [n, h, w * stride, c])[:, :, :w * stride - stride + 1]
    zeros = tf.zeros_like(g)
    g = tf.reshape(tf.stack([g] + [zeros] * (stride - 1), axis=2), [n, h * stride, g.shape[2], c])
    return g[:, :h * stride - stride + 1]


def matmul(a, b, transpose_a: bool = False, transpose_b: bool = False):
    """``a @ b`` (``a`` a matrix or a stack of them, ``b`` a matrix) as TFLite's BATCH_MATMUL, which XNNPACK runs
    whether or not ``b`` is a constant.

    A 2-D matmul with ``transpose_b`` converts to FULLY_CONNECTED, and a 1x1 conv to CONV_2D: with a weight that is a
    variable XNNPACK takes neither, and TFLite's own kernels ran MobileNetV2's 1x1 convs at a fifth of XNNPACK's speed
    (36 against 200 GFLOP/s on two threads). A rank-4 ``a`` multiplies as it is (no reshape, which XNNPACK copies);
    a matrix goes in as a batch of one."""
    if len(a.shape) > 2:
        return tf.linalg.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
    y = tf.linalg.matmul(tf.expand_dims(a, 0), tf.expand_dims(b, 0), transpose_a=transpose_a, transpose_b=transpose_b)
    return tf.squeeze(y, 0)  # not a reshape to y.shape[1:]: an inference export leaves the batch open (None)


def _pointwise(k: int, stride: int, padding: int, depthwise: bool) -> bool:
    """A 1x1 conv: a matmul over the channels."""
    return not depthwise and k == 1 and stride == 1 and padding == 0


def _forward_conv(x, w, stride: int, padding: int, depthwise: bool, dynamic: bool = False):
    """The conv's output; ``dynamic``: the weight is a variable (a 1x1 conv then runs as a matmul, see ``matmul``;
    with a constant weight CONV_2D is XNNPACK's)."""
    k = w.shape[0]
    if dynamic and _pointwise(k, stride, padding, depthwise):
        return matmul(x, tf.reshape(w, w.shape[2:]))
    if stride == 1 and 2 * padding == k - 1:  # symmetric padding equals SAME: no padded copy
        xp, mode = x, "SAME"
    else:
        xp, mode = _pad(x, padding), "VALID"
    if depthwise:
        return tf.nn.depthwise_conv2d(xp, w, [1, stride, stride, 1], mode)
    return tf.nn.conv2d(xp, w, stride, mode)


def conv2d(x, w, b, stride: int, padding: int, depthwise: bool, grads: tuple[bool, bool, bool],
           dynamic: bool | None = None):
    """PyTorch's conv (zero padding ``padding`` on each side); ``grads`` = (input, weight, bias) wanted.

    ``w`` and ``b`` are variables (trained), constants (frozen) or tensors computed from them; ``b`` may be None.
    ``dynamic``: ``w`` changes from step to step (default: it is a variable).
    """
    want_x, want_w, want_b = grads
    want_b = want_b and b is not None
    k = w.shape[0]
    dynamic = isinstance(w, tf.Variable) if dynamic is None else dynamic

    def forward(x, w, b):
        y = _forward_conv(x, w, stride, padding, depthwise, dynamic)
        return y + b if b is not None else y

    if not any(grads):
        return forward(x, w, b)

    @tf.custom_gradient
    def op(x, *params):
        p = dict(zip([n for n, on in (("w", want_w), ("b", want_b)) if on], params))
        weight = p.get("w", w)
        y = forward(x, weight, p.get("b", b))

        @_scoped
        def backward(dy):
            grads = [_input_grad(dy, x.shape, weight, stride, padding, depthwise) if want_x else None]
            if want_w:
                grads.append(_weight_grad(x, dy, k, stride, padding, depthwise))
            if want_b:
                grads.append(channel_sum(dy))
            return grads

        return y, backward

    trained = [t for t, on in ((w, want_w), (b, want_b)) if on]
    return op(x, *trained)


def _weight_grad(x, dy, k: int, stride: int, padding: int, depthwise: bool):
    ci, co = x.shape[-1], dy.shape[-1]
    x2 = tf.reshape(x, [-1, ci])
    if _pointwise(k, stride, padding, depthwise):
        return tf.reshape(matmul(x2, tf.reshape(dy, [-1, co]), transpose_a=True), [1, 1, ci, co])
    if depthwise:
        return _depthwise_weight_grad(x, dy, k, stride, padding)
    taps = _tap_grads(dy, x.shape, k, stride, padding)  # row-major: (0, 0), (0, 1), ... as the kernel lays out
    return tf.reshape(tf.stack([matmul(x2, tf.reshape(d, [-1, co]), transpose_a=True) for _, _, d in taps]),
                      [k, k, ci, co])


#: TFLite's float depthwise kernel accumulates one output pixel's channels in a stack buffer of 4832 floats; with
#: more channels it never finishes (ai-edge-litert 2.3.0: 9 x 9 x 7680 ran for minutes)
DEPTHWISE_MAX_CHANNELS = 4832


def _depthwise_weight_grad(x, dy, k: int, stride: int, padding: int):
    """dW[i, j, c] = sum over n, o, q of xp[n, s*o + i, s*q + j, c] * dy[n, o, q, c] as DEPTHWISE_CONV_2D: images
    join the channels (image and output gradient transposed to H, W, N, C), the output gradient is the filter,
    dilated by the stride, and the k x k output holds each image's tap sums, added over the images after. As many
    images go into one conv as its channel limit allows.

    One kernel reads the image and the gradient once; the tap by tap form (a shifted copy, a product and a sum
    per tap) streamed 27 tensors of the layer's size through memory, 3.6 times the time in a whole step."""
    n, h, w, c = x.shape
    if c > DEPTHWISE_MAX_CHANNELS:
        taps = _tap_grads(dy, x.shape, k, stride, padding)
        return tf.reshape(tf.stack([channel_sum(x * d) for _, _, d in taps]), [k, k, c, 1])
    _, ho, wo, _ = dy.shape
    chunks = -(-n * c // DEPTHWISE_MAX_CHANNELS)
    per = -(-n // chunks)
    xt = tf.transpose(_pad(x, padding), [1, 2, 0, 3])  # Hp, Wp, N, C
    dyt = tf.transpose(dy, [1, 2, 0, 3])  # Ho, Wo, N, C
    total = None
    for n0 in range(0, n, per):
        m = min(per, n - n0)
        xi = xt if m == n else xt[:, :, n0:n0 + m]
        fi = dyt if m == n else dyt[:, :, n0:n0 + m]
        taps = tf.raw_ops.DepthwiseConv2dNative(input=tf.reshape(xi, [1, *xi.shape[:2], m * c]),
                                                filter=tf.reshape(fi, [ho, wo, m * c, 1]), strides=[1, 1, 1, 1],
                                                padding="VALID", dilations=[1, stride, stride, 1])
        taps = tf.reduce_sum(tf.reshape(taps[:, :k, :k, :], [k, k, m, c]), axis=2)  # rows past the kernel: none
        total = taps if total is None else total + taps
    return tf.reshape(total, [k, k, c, 1])


def _input_grad(dy, x_shape, w, stride: int, padding: int, depthwise: bool):
    n, h, wd, c = x_shape
    k = w.shape[0]
    if _pointwise(k, stride, padding, depthwise):
        return matmul(dy, tf.reshape(w, w.shape[2:]), transpose_b=True)
    if depthwise and stride == 1 and 2 * padding == k - 1:  # the transposed conv is the same conv, kernel flipped
        return tf.nn.depthwise_conv2d(dy, tf.reverse(w, [0, 1]), [1, 1, 1, 1], "SAME")
    hp, wp = h + 2 * padding, wd + 2 * padding
    if depthwise:
        dxp = _depthwise_transposed(dy, w, stride, hp, wp)
    else:
        covered = [n, (dy.shape[1] - 1) * stride + k, (dy.shape[2] - 1) * stride + k, c]
        dxp = tf.nn.conv2d_transpose(dy, w, covered, stride, "VALID")
    # rows of the padded input no output reads get no gradient; then drop the padding
    dxp = tf.pad(dxp, [[0, 0], [0, max(0, hp - dxp.shape[1])], [0, max(0, wp - dxp.shape[2])], [0, 0]])
    return dxp[:, padding:padding + h, padding:padding + wd, :]


def _depthwise_transposed(dy, w, stride: int, hp: int, wp: int):
    """The gradient of a strided depthwise conv's padded input (at least ``hp`` x ``wp``), phase by phase: row
    s * a + r of it gathers dy[a - m] * w[r + s * m], a stride-1 conv of dy with every s-th kernel row from r,
    flipped. The s * s phase outputs interleave into the result (concatenation and depth-to-space, XNNPACK's). Zeros
    inserted between dy's elements and a conv with the whole kernel did s * s times the arithmetic on an s * s times
    larger tensor."""
    a_h, a_w = -(-hp // stride), -(-wp // stride)  # rows and columns of each phase
    phases = []
    for r in range(stride):
        for q in range(stride):
            sub = tf.reverse(w[r::stride, q::stride], [0, 1])
            mh, mw = sub.shape[0], sub.shape[1]
            g = tf.pad(dy, [[0, 0], [mh - 1, a_h - dy.shape[1]], [mw - 1, a_w - dy.shape[2]], [0, 0]])
            phases.append(tf.nn.depthwise_conv2d(g, sub, [1, 1, 1, 1], "VALID"))
    # phase (r, q) at channels (r * s + q) * C: DEPTH_TO_SPACE puts it at row s * a + r, column s * b + q
    return tf.nn.depth_to_space(tf.concat(phases, axis=3), stride)


def batch_norm(x, weight, bias, eps: float, grads: tuple[bool, bool, bool]):
    """PyTorch's batch norm in training mode on NHWC ``x``: (y, batch mean, biased batch variance).

    ``grads`` = (input, weight, bias) wanted, as for :func:`conv2d`. The statistics are not differentiated
    (they only update the running statistics).
    """
    want_x, want_w, want_b = grads
    n = x.shape[0] * x.shape[1] * x.shape[2]

    def statistics(x):
        mean = channel_sum(x) / n
        centred = x - mean  # two passes, as PyTorch: E[x^2] - E[x]^2 would cancel on large activations
        var = channel_sum(centred * centred) / n
        return mean, centred, var, tf.math.rsqrt(var + eps)

    if not any(grads):
        mean, centred, var, rstd = statistics(x)
        return centred * (rstd * weight) + bias, mean, var

    @tf.custom_gradient
    def op(x, *params):
        p = dict(zip([key for key, on in (("w", want_w), ("b", want_b)) if on], params))
        gamma = p.get("w", weight)
        mean, centred, var, rstd = statistics(x)
        y = centred * (rstd * gamma) + p.get("b", bias)

        @_scoped
        def backward(dy, *_):  # nothing differentiates the statistics' outputs
            dbias = channel_sum(dy)
            dweight = channel_sum(dy * centred) * rstd  # the sum of dy * x_hat, x_hat = centred * rstd
            # dx = k * (dy - dbias / n - x_hat * dweight / n) with k = gamma * rstd, as k * dy - (centred * a + b)
            # with per-channel a and b: x_hat is never made, a pass over the activation fewer
            k = gamma * rstd
            out = [dy * k - (centred * (k * rstd * dweight / n) + k * dbias / n) if want_x else None]
            if want_w:
                out.append(dweight)
            if want_b:
                out.append(dbias)
            return out

        return (y, mean, var), backward

    trained = [t for t, on in ((weight, want_w), (bias, want_b)) if on]
    return op(x, *trained)


def affine(x, scale, shift, grads: tuple[bool, bool, bool]):
    """``x * scale + shift`` with per-channel ``scale`` and ``shift``: a norm with running statistics (MobileTL's
    shift-only norms). ``grads`` = (input, scale, shift) wanted; ``scale`` and ``shift`` may be tensors computed
    from trained variables (the tape carries their gradients on)."""
    want_x, want_s, want_b = grads
    if not any(grads):
        return x * scale + shift

    @tf.custom_gradient
    def op(x, *params):
        p = dict(zip([key for key, on in (("s", want_s), ("b", want_b)) if on], params))
        s = p.get("s", scale)
        y = x * s + p.get("b", shift)

        @_scoped
        def backward(dy):
            out = [dy * s if want_x else None]
            if want_s:
                out.append(channel_sum(dy * x))
            if want_b:
                out.append(channel_sum(dy))
            return out

        return y, backward

    trained = [t for t, on in ((scale, want_s), (shift, want_b)) if on]
    return op(x, *trained)


def pooled(x):
    """(x, its spatial mean (N, 1, 1, C)), for a layer that reads both (squeeze-excitation): the two gradients meet in
    one broadcasting add, which XNNPACK runs. TensorFlow's own (the mean's gradient tiled to the input's shape,
    scaled, then added with ADD_N) took three passes, two in TFLite's single-thread kernels: 2.5 ms of MobileNetV3-Large
    ``mobiletl:5``'s step at one thread."""

    @tf.custom_gradient
    def op(x):
        @_scoped
        def backward(dx, dmean):
            return dx + dmean * (1.0 / (x.shape[1] * x.shape[2]))

        return (tf.identity(x), spatial_mean(x, keepdims=True)), backward

    return op(x)


def channel_scale(x, s):
    """``x * s`` for a per-image, per-channel ``s`` (N, 1, 1, C), as squeeze-excitation scales its input."""

    @tf.custom_gradient
    def op(x, s):
        @_scoped
        def backward(dy):
            d = dy * x
            return dy * s, tf.reduce_sum(tf.reduce_sum(d, axis=2, keepdims=True), axis=1, keepdims=True)

        return x * s, backward

    return op(x, s)


# -- activations -----------------------------------------------------------------------------------

def _hardsigmoid(x):
    return tf.nn.relu6(x + 3.0) / 6.0


FORWARD = {
    "relu": tf.nn.relu,
    "relu6": tf.nn.relu6,
    "hardsigmoid": _hardsigmoid,
    "hardswish": lambda x: x * _hardsigmoid(x),
}

def _nonzero(v):
    """1.0 where ``v`` > 0, 0.0 where ``v`` is 0 or in (-1, 0): ops XNNPACK runs, on all threads. A comparison and a
    select are TFLite's own kernels, on one thread: 0.69 against 0.48 ms on 8 x 14 x 14 x 576 elements at one thread.
    (A positive subnormal ``v`` counts as positive, as in PyTorch, unless the CPU flushes subnormals to zero.)"""
    return tf.minimum(tf.math.ceil(v), 1.0)


def _inside_relu6(y):
    """0 < y < 6 from ReLU6's output. A function, not a lambda beside another on one line: TensorFlow's autograph
    converts a lambda from its source line and took ``from_input``'s there (MobileNetV2 ``full`` failed to export)."""
    return _nonzero(y * (6.0 - y))


@dataclass(frozen=True)
class Mask:
    """Where an activation's gradient passes: ``from_input(x, threshold)``, a boolean made in the forward pass and
    kept for backward (a byte per element); ``from_output(y)``, a 0/1 multiplier made in the backward pass from the
    output, when the next layer keeps that output for its own backward anyway (a trained conv's input, the input that
    squeeze-excitation scales), so the mask costs no memory at all."""

    from_input: Callable
    from_output: Callable | None = None


# An interval's mask from the input is one comparison of a float the delegate computes: min(x - lo, hi - x) > 0 is
# lo < x < hi exactly (a float difference keeps its sign and is zero only for equal operands). TFLite's LOGICAL_AND
# of two comparisons took 1.6 ms on 8 x 14 x 14 x 576 elements, 40 times the comparison. From the output: 0 < y < 6
# exactly when y * (6 - y) > 0 (ReLU6), y > 0 when x > 0 (ReLU, and Hard-Swish's sign: x * relu6(x + 3) / 6 has x's).
#: kind -> (mask, slope): the exact gradient is dy * mask * slope, with PyTorch's conventions at the kinks
MASKS = {
    "relu": (Mask(lambda x, t: x > 0, _nonzero), 1.0),
    "relu6": (Mask(lambda x, t: tf.minimum(x, 6.0 - x) > 0, _inside_relu6), 1.0),
    "hardsigmoid": (Mask(lambda x, t: tf.minimum(x + 3.0, 3.0 - x) > 0), 1.0 / 6.0),
    "hardswish_mobiletl": (Mask(lambda x, t: x > t, _nonzero), 1.0),  # MobileTL's sign approximation
}


def activation(x, kind: str, masked: bool = False, threshold: float = 0.0, output_kept: bool = False):
    """``kind`` in FORWARD; ``masked`` selects MobileTL's Hard-Swish backward (the others are exact anyway);
    ``output_kept``: the next layer keeps the output for its backward (see :class:`Mask`)."""
    forward = FORWARD[kind]
    key = "hardswish_mobiletl" if kind == "hardswish" and masked else kind

    @tf.custom_gradient
    def op(x):
        y = forward(x)
        if key in MASKS:
            mask, slope = MASKS[key]
            # the output's sign tells MobileTL's threshold only at 0
            from_output = output_kept and mask.from_output is not None and (key != "hardswish_mobiletl" or not threshold)
            kept = None if from_output else mask.from_input(x, threshold)  # kept for backward instead of x

            @_scoped
            def backward(dy):
                g = dy * mask.from_output(y) if from_output else tf.where(kept, dy, tf.zeros_like(dy))
                return g * slope if slope != 1.0 else g
        else:  # exact Hard-Swish, as torch's hardswish_backward: 0 below -3, x/3 + 1/2 up to 3, 1 above
            @_scoped
            def backward(dy):
                inner = tf.where(x <= 3.0, dy * (x / 3.0 + 0.5), dy)
                return tf.where(x < -3.0, tf.zeros_like(dy), inner)
        return y, backward

    return op(x)


def cross_entropy(logits, labels):
    """Mean cross-entropy over the batch, with the softmax gradient written out (no sparse-softmax op)."""

    @tf.custom_gradient
    def op(z):
        onehot = tf.one_hot(labels, z.shape[-1], dtype=z.dtype)
        top = tf.reduce_max(z, axis=1, keepdims=True)
        lse = tf.squeeze(top, 1) + tf.math.log(tf.reduce_sum(tf.exp(z - top), axis=1))
        loss = tf.reduce_mean(lse - tf.reduce_sum(onehot * z, axis=1))

        @_scoped
        def backward(dloss):
            return (tf.nn.softmax(z) - onehot) * (dloss / z.shape[0])

        return loss, backward

    return op(logits)
