"""Local layer parity: each compared layer re-run in Keras on the .tflite's own inputs.

Why: the cumulative comparison (parity.compare_layers: the Keras QAT model and the .tflite each
run end to end from the same images) carries every upstream difference forward, and measures
it in LSB of each tensor's own scale. One LSB of a coarse tensor (a conv output over [-30, 30])
is ten LSB of a fine one downstream (a ReLU6 over [0, 6]), so in a deep network (MobileNetV3's
hard-swish blocks) the cumulative error of a faithful conversion grows past any fixed
threshold, and the layer it names is where the drift got large, not where the conversion went
wrong.

How: for each compared layer, walk back through the QAT model's graph to the nearest layers
that have a TFLite tensor of their own (the frontier; the model inputs at the latest), feed the
dequantized TFLite values of those tensors into the Keras layers between (the compared layer
plus the ones fused into it), and compare the result with the layer's TFLite tensor. What is
left is the error this op adds itself: integer rounding against float rounding of the same
fake-quant grid (<= 0.5 LSB from the output rounding, plus bias and multiplier rounding), or a
real conversion fault (wrong scale, a missing requantize, a kernel mismatch), which shows as
many LSB.

The graph is replayed node by node the way tf_keras's functional models run themselves (each
node's call arguments with the computed values substituted), so layers with several inputs,
keyword tensors and TFOpLambda arithmetic replay exactly.
"""

from __future__ import annotations

import numpy as np

from pipeline.core import keras_env

# Samples per Keras call (bounds the memory of one eager layer call on a large test split).
BATCH = 512


class _Feed(dict):
    """tensor id -> value; hands out a fresh one-element list per lookup, which is what a
    tf_keras Node's map_arguments pops from."""

    def __getitem__(self, key):
        return [dict.__getitem__(self, key)]


def _order(model) -> list:
    """The model's non-input nodes in topological order (deepest first, as tf_keras runs)."""
    by_depth = getattr(model, "_nodes_by_depth", None) or {}
    return [n for d in sorted(by_depth, reverse=True) for n in by_depth[d] if not n.is_input]


def subgraphs(model, known: set[str]) -> dict[str, tuple[list, dict[str, str]]]:
    """For each layer named in ``known``: (the nodes to run, in order, ending with its own;
    {input tensor id: name of the known layer whose TFLite value feeds it}). Model inputs are
    fed the raw data (tensor ids absent from the map)."""
    order = _order(model)
    producer = {tid: n for n in order for tid in n.flat_output_ids}
    out = {}
    for target in order:
        name = target.layer.name
        if name not in known or name in out:
            continue
        seen, feeds, stack = set(), {}, [target]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            for tid in node.flat_input_ids:
                p = producer.get(tid)
                if p is None:
                    continue  # a model input
                if p.layer.name in known and p is not target:
                    feeds[tid] = p.layer.name
                else:
                    stack.append(p)
        out[name] = ([n for n in order if id(n) in seen], feeds)
    return out


def _run(env, model, nodes: list, feeds: dict, values: dict, xs: list, sl: slice):
    feed = _Feed()
    for t, x in zip(model.inputs, xs):
        feed[str(id(t))] = env.tf.constant(x[sl])
    for tid, layer in feeds.items():
        feed[tid] = env.tf.constant(values[layer][sl], dtype=env.tf.float32)
    for node in nodes:
        args, kwargs = node.map_arguments(feed)
        outputs = node.layer(*args, **kwargs)
        for tid, y in zip(node.flat_output_ids, env.tf.nest.flatten(outputs)):
            feed[tid] = y
    return np.asarray(dict.__getitem__(feed, nodes[-1].flat_output_ids[0]), dtype=np.float64)


def local_errors(model, tflite_values: dict[str, np.ndarray], scales: dict[str, float],
                 xs: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    """layer name -> (mean, max) |Keras(local) - TFLite| in LSB of the layer's TFLite scale.

    ``tflite_values``: dequantized TFLite tensor per compared layer (keyed by the QAT model's
    layer name), batch first; ``xs``: the model's inputs as fed to the Keras model."""
    env = keras_env.load()
    layers = {l.name: l for l in model.layers}
    values = {name: np.asarray(v, dtype=np.float32).reshape(
        (len(v),) + tuple(int(d) for d in layers[name].output.shape[1:]))
        for name, v in tflite_values.items()}
    n = len(xs[0])
    out = {}
    for name, (nodes, feeds) in subgraphs(model, set(values)).items():
        total, worst = 0.0, 0.0
        for start in range(0, n, BATCH):
            sl = slice(start, min(n, start + BATCH))
            got = _run(env, model, nodes, feeds, values, xs, sl)
            ref = np.asarray(tflite_values[name][sl], dtype=np.float64).reshape(got.shape)
            err = np.abs(got - ref) / scales[name]
            total += float(err.sum())
            worst = max(worst, float(err.max()))
        out[name] = (total / (n * values[name][0].size), worst)
    return out
