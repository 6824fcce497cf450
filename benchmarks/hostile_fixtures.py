"""Fixtures for benchmarks/hostile_bench.py, built ONCE in a child process (it imports TF).

    python benchmarks/hostile_fixtures.py OUT_DIR

Writes into OUT_DIR: a tiny tf_keras model (tiny.h5, tiny.keras), its full-int8 conversion
(tiny_int8.tflite), matching data (tiny.npz, big.npz with a large test split for the kill
cases), a reference bundle (ref/), a SavedModel whose keras_metadata.pb declares a Lambda with
reformatted JSON (lambda_sm_*), .tflite files whose vectors repeat one offset many times
(rep_*.tflite) and op-code edits (op_*.tflite), then DONE.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

SHAPE = (4, 4, 1)


def build_model(out: Path):
    import tf_keras as k

    k.utils.set_random_seed(0)
    inp = k.Input(SHAPE)
    x = k.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = k.layers.Flatten()(x)
    x = k.layers.Dense(64, activation="relu")(x)
    out_t = k.layers.Dense(3)(x)
    m = k.Model(inp, out_t)
    m.save(out / "tiny.h5")
    m.save(out / "tiny.keras")
    return k, m


def convert(m, x) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(m)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x[i: i + 1]] for i in range(len(x)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def raw_outputs(content: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    s, z = i["quantization"]
    outs = []
    for row in x:
        it.set_tensor(i["index"], np.clip(np.round(row[None] / s + z), -128, 127).astype(np.int8))
        it.invoke()
        outs.append(it.get_tensor(o["index"])[0].copy())
    return np.stack(outs), o["quantization"]


def lambda_savedmodel(k, out: Path) -> None:
    """A SavedModel with a Lambda, then keras_metadata.pb rewritten so that the Lambda's JSON
    no longer contains the byte string '"class_name": "Lambda"' (whitespace / escapes)."""
    from tf_keras.protobuf import saved_metadata_pb2

    inp = k.Input(SHAPE)
    # the stored code writes $HOSTILE_MARKER when it runs: a load that executes it is visible
    y = k.layers.Lambda(lambda t: (open(__import__("os").environ.get(
        "HOSTILE_MARKER", "/dev/null"), "a").close(), t)[1], name="evil")(inp)
    y = k.layers.Flatten()(y)
    y = k.layers.Dense(3)(y)
    base = out / "lambda_sm_base"
    k.Model(inp, y).save(base, save_format="tf")
    styles = {
        "compact": lambda d: json.dumps(d, separators=(",", ":")),
        "indent": lambda d: json.dumps(d, indent=2),
        "escaped": lambda d: json.dumps(d).replace('"Lambda"', '"\\u004cambda"'),
        "tabs": lambda d: json.dumps(d).replace('": "', '":\t"'),
    }
    for name, fmt in styles.items():
        dst = out / f"lambda_sm_{name}"
        shutil.copytree(base, dst)
        meta = saved_metadata_pb2.SavedMetadata()
        meta.ParseFromString((dst / "keras_metadata.pb").read_bytes())
        for node in meta.nodes:
            try:
                node.metadata = fmt(json.loads(node.metadata))
            except ValueError:
                pass
        (dst / "keras_metadata.pb").write_bytes(meta.SerializeToString())
    shutil.rmtree(base)


def repeated(content: bytes, out: Path) -> None:
    """Vectors whose elements all hold the offset of ONE table (shared when packed)."""
    from ai_edge_litert import schema_py_generated as s

    from tests import tflite_craft

    cache: dict = {}
    originals = {}

    def memo(cls):
        orig = originals[cls] = cls.Pack

        def pack(self, builder):
            key = (id(builder), id(self))
            if key not in cache:
                cache[key] = orig(self, builder)
            return cache[key]
        cls.Pack = pack

    for cls in (s.TensorT, s.OperatorT, s.SubGraphT, s.BufferT):
        memo(cls)
    for n in (1_000, 100_000, 1_000_000):
        for kind in ("tensors", "operators", "subgraphs", "buffers"):
            m = tflite_craft.unpack(content)
            sg = m.subgraphs[0]
            if kind == "tensors":
                sg.tensors = sg.tensors + [sg.tensors[-1]] * n
            elif kind == "operators":
                sg.operators = sg.operators + [sg.operators[-1]] * n
            elif kind == "subgraphs":
                m.subgraphs = m.subgraphs + [sg] * n
            else:
                big = max(m.buffers, key=lambda b: 0 if b.data is None else len(b.data))
                m.buffers = m.buffers + [big] * n
            cache.clear()
            (out / f"rep_{kind}_{n}.tflite").write_bytes(tflite_craft.pack(m))
    for cls, orig in originals.items():
        cls.Pack = orig


def opcode_edits(content: bytes, out: Path) -> None:
    from ai_edge_litert import schema_py_generated as s

    from tests import tflite_craft

    names = {"split": s.BuiltinOperator.SPLIT, "reshape": s.BuiltinOperator.RESHAPE,
             "custom": s.BuiltinOperator.CUSTOM, "while": s.BuiltinOperator.WHILE,
             "call_once": s.BuiltinOperator.CALL_ONCE, "bogus": 250}
    m0 = tflite_craft.unpack(content)
    for name, code in names.items():
        for idx in range(len(m0.operatorCodes)):
            def fn(m, idx=idx, code=code):
                oc = m.operatorCodes[idx]
                oc.builtinCode = code
                oc.deprecatedBuiltinCode = min(code, 127)
                if code == s.BuiltinOperator.CUSTOM:
                    oc.customCode = b"HostileOp"
            (out / f"op_{name}_{idx}.tflite").write_bytes(tflite_craft.edit(content, fn))


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    k, m = build_model(out)
    x_train = rng.random((48, *SHAPE), np.float32)
    y_train = rng.integers(0, 3, 48)
    x_test = rng.random((16, *SHAPE), np.float32)
    y_test = rng.integers(0, 3, 16)
    np.savez(out / "tiny.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    big = rng.random((300_000, *SHAPE), np.float32)
    np.savez(out / "big.npz", x_train=x_train, y_train=y_train, x_test=big,
             y_test=rng.integers(0, 3, len(big)))
    content = convert(m, x_train)
    (out / "tiny_int8.tflite").write_bytes(content)
    raw, oq = raw_outputs(content, x_test)
    ref = out / "ref"
    ref.mkdir(exist_ok=True)
    np.savez_compressed(ref / "inputs.npz", x=x_test, y=y_test.astype(np.int64))
    np.savez_compressed(ref / "tiny_int8_outputs.npz", raw)
    doc = {"schema_version": 1, "tolerance_lsb": 1, "min_agreement": 0.99,
           "samples": len(x_test),
           "variants": {"tiny_int8": {"file": "tiny_int8.tflite",
                                      "sha256": hashlib.sha256(content).hexdigest(),
                                      "outputs": "tiny_int8_outputs.npz", "accuracy": 0.0,
                                      "output_quant": [{"scale": float(oq[0]),
                                                        "zero_point": int(oq[1])}]}}}
    (ref / "expected.json").write_text(json.dumps(doc))
    lambda_savedmodel(k, out)
    repeated(content, out)
    opcode_edits(content, out)
    (out / "DONE").write_text("1\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
