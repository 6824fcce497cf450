"""LiteRT interpreter factory and batched runner. No TensorFlow import unless asked for.

Preference order (core.records.Runtime): ai_edge_litert (LiteRT, the maintained package) ->
tflite_runtime (its last release, 2.14, needs numpy<2) -> tf.lite (deprecated inside
TensorFlow, imported via keras_env).
"""

from __future__ import annotations

import importlib
import os
import warnings
import weakref
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.core.errors import ModelFileError, QatError, UsageError, first_line
from pipeline.core.native import quiet_native_output
from pipeline.core.records import RUNTIME_AUTO, QuantParams, Runtime
from pipeline.tflite import feeding
from pipeline.tflite.names import output_position
from pipeline.tflite.tflite_model import read_file

# batch_size=0 (auto): as many samples per invoke as keep one batch's activations within this
# many bytes (about half a core's L2 cache), at most MAX_AUTO_BATCH. Bigger batches buy little
# on CPU - LiteRT's per-invoke cost is a few µs (digits_cnn int8: batch 16 to 450 cost 8-14 µs
# per sample, benchmarks/pipeline_bench.py) - while the arena grows with the batch: a
# 224x224 model at a fixed batch of 256 would allocate gigabytes.
AUTO_BATCH_BYTES = 256 * 1024
MAX_AUTO_BATCH = 256
_MODULES = {Runtime.LITERT: "ai_edge_litert.interpreter",
            Runtime.TFLITE_RUNTIME: "tflite_runtime.interpreter"}


def _import_runtime(runtime: Runtime):
    if runtime is Runtime.TENSORFLOW:
        from pipeline.core import keras_env  # lazy: its import sets TensorFlow's env variables

        return keras_env.load().tf.lite  # keras_env: the only TensorFlow import path
    return importlib.import_module(_MODULES[runtime])


def resolve_runtime(name: str | None = None) -> tuple[str, object]:
    """Return (runtime name, module exposing Interpreter and OpResolverType).

    ``name`` None or "auto" walks Runtime's preference order; an explicit name must import.
    """
    name = name or os.environ.get("QAT_RUNTIME") or RUNTIME_AUTO
    if name not in Runtime.names():
        raise UsageError("Unknown interpreter runtime", name,
                         f"Use one of: {', '.join(Runtime.names())}")
    candidates = tuple(Runtime) if name == RUNTIME_AUTO else (Runtime(name),)
    errors = []
    for candidate in candidates:
        try:
            return candidate.value, _import_runtime(candidate)
        except Exception as exc:  # ImportError, or numpy-ABI errors from tflite_runtime
            if name != RUNTIME_AUTO and isinstance(exc, QatError):
                raise  # the asked-for runtime's own fix (keras_env names the missing extra)
            errors.append(f"{candidate}: {type(exc).__name__}: {first_line(exc, None, '')}")
    raise UsageError("No LiteRT interpreter could be imported", "; ".join(errors),
                     "pip install 'ai-edge-litert>=2.3'")


def auto_batch_size(interpreter, budget: int = AUTO_BATCH_BYTES, cap: int = MAX_AUTO_BATCH) -> int:
    """Samples per invoke whose activations fit ``budget`` bytes (1..cap).

    Activations are the tensors whose batch dimension is dynamic (shape_signature[0] == -1);
    their sizes at batch 1 are summed. A model with a fixed batch gets ``cap`` (the runner
    then falls back to one sample per invoke anyway)."""
    per_sample = 0
    for d in interpreter.get_tensor_details():
        sig = d.get("shape_signature")
        if sig is not None and len(sig) and int(sig[0]) == -1:
            per_sample += int(np.prod(d["shape"][1:])) * np.dtype(d["dtype"]).itemsize
    if per_sample == 0:
        return cap
    return max(1, min(cap, budget // per_sample))


def make_interpreter(model: bytes | str | os.PathLike, *, runtime: str | None = None,
                     num_threads: int | None = None, xnnpack: bool = True,
                     preserve_all_tensors: bool = False, source: str | None = None):
    """Build an interpreter from bytes or a path. Tensors are not allocated yet.

    ``source`` names the model in errors (default: its path, or "<bytes>")."""
    _, mod = resolve_runtime(runtime)
    kwargs: dict = {}
    if num_threads is not None:
        kwargs["num_threads"] = int(num_threads)
    if preserve_all_tensors:
        kwargs["experimental_preserve_all_tensors"] = True
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = \
            mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if isinstance(model, (bytes, bytearray, memoryview)):
        kwargs["model_content"] = bytes(model)
    else:
        kwargs["model_path"] = os.fspath(model)
    try:
        with quiet_native_output(), warnings.catch_warnings():
            # "Enabling experimental_preserve_all_tensors ... for debugging purposes only":
            # layer parity is exactly that use.
            warnings.simplefilter("ignore", UserWarning)
            return mod.Interpreter(**kwargs)
    except (ValueError, RuntimeError) as exc:
        where = source or ("<bytes>" if "model_content" in kwargs else kwargs["model_path"])
        raise ModelFileError("The interpreter could not load the model", where,
                             f"Check the file is a valid .tflite ({first_line(exc, 300)})")


@dataclass(frozen=True)
class TensorSpec:
    """An interpreter input/output with the parameters needed to feed or read it."""

    name: str
    index: int
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    dtype: np.dtype
    quant: QuantParams | None

    @classmethod
    def from_details(cls, d: dict) -> "TensorSpec":
        scale, zp = d.get("quantization", (0.0, 0))
        dtype = np.dtype(d["dtype"])
        quant = (QuantParams(float(scale), int(zp), dtype.name)
                 if scale and dtype.kind in "iu" else None)
        sig = d.get("shape_signature")
        return cls(d["name"], int(d["index"]), tuple(int(v) for v in d["shape"]),
                   tuple(int(v) for v in (sig if sig is not None else d["shape"])), dtype, quant)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape_signature), "dtype": self.dtype.name,
                "scale": self.quant.scale if self.quant else None,
                "zero_point": self.quant.zero_point if self.quant else None}


class _Worker:
    """One interpreter and the batch size its tensors are allocated for."""

    def __init__(self, interpreter, inputs: list[TensorSpec], outputs: list[TensorSpec]):
        self.interpreter = interpreter
        self.inputs, self.outputs = inputs, outputs
        self.batch: int | None = None
        self.fixed_batch = False

    def allocate(self, batch: int) -> int:
        """Allocate the tensors for ``batch`` samples per invoke; returns the batch in use
        (1 for a model whose batch dimension cannot be resized)."""
        if self.fixed_batch:
            batch = 1
        if self.batch == batch:
            return batch
        try:
            for spec in self.inputs:
                self.interpreter.resize_tensor_input(spec.index, [batch, *spec.shape[1:]],
                                                     strict=False)
            self.interpreter.allocate_tensors()
            self.batch = batch
            return batch
        except (ValueError, RuntimeError):
            if batch == 1:
                raise
            # The batch is baked into the graph (e.g. a Reshape to a constant shape): one
            # sample per invoke from now on. The inputs were resized before the failure, so
            # they must be resized back even though the last good allocation was batch 1.
            self.fixed_batch, self.batch = True, None
            return self.allocate(1)

    def run_range(self, prepared: list[np.ndarray], start: int, stop: int, batch: int,
                  dequantize: bool, extra: dict[int, TensorSpec] | None = None
                  ) -> list[np.ndarray]:
        """Outputs (then the ``extra`` tensors, in key order) for samples [start, stop).

        Raw outputs are copied into one preallocated array per tensor and dequantized once at
        the end, so the per-invoke Python work is set_tensor, invoke and get_tensor only."""
        batch = self.allocate(batch)
        it = self.interpreter
        specs = self.outputs + list((extra or {}).values())
        raw: list[np.ndarray | None] = [None] * len(specs)
        for lo in range(start, stop, batch):
            hi = min(lo + batch, stop)
            for spec, arr in zip(self.inputs, prepared):
                part = arr[lo:hi]
                if hi - lo < batch:  # zero-pad the short last batch instead of re-allocating
                    pad = np.zeros((batch - (hi - lo), *part.shape[1:]), dtype=part.dtype)
                    part = np.concatenate([part, pad])
                it.set_tensor(spec.index, part)
            it.invoke()
            for k, spec in enumerate(specs):
                y = it.get_tensor(spec.index)
                if raw[k] is None:
                    raw[k] = np.empty((stop - start, *y.shape[1:]), dtype=y.dtype)
                raw[k][lo - start:hi - start] = y[: hi - lo]
        return [ModelRunner.read_output(spec, y, dequantize, copy=False)
                for spec, y in zip(specs, raw)]


class ModelRunner:
    """Runs a .tflite over whole arrays in batches, (de)quantizing with the model's own params.

    The input tensors are resized once to the batch; a short last batch is zero-padded and
    sliced off, so an interpreter re-allocates at most once. Models whose batch dimension
    cannot be resized fall back to one sample per invoke. With ``workers`` > 1 the samples are
    split into contiguous shards, each run by its own interpreter in a thread (LiteRT's
    ``invoke`` releases the GIL), which uses every core even when the model is too small for
    the interpreter's own threads to help. ``batch_size`` 0 (the default) picks a cache-sized
    batch (:func:`auto_batch_size`); a positive value is used as given.
    """

    def __init__(self, model: bytes | str | os.PathLike, *, batch_size: int = 0,
                 runtime: str | None = None, num_threads: int | None = None,
                 xnnpack: bool = True, preserve_all_tensors: bool = False, workers: int = 1,
                 source: str | None = None):
        if batch_size < 0:
            raise UsageError("Batch size must be 0 (auto) or more", batch_size,
                             "Pass --batch-size 0 for a cache-sized batch, or a positive size")
        if workers < 1:
            raise UsageError("Worker count must be at least 1", workers, "Pass 1 or more")
        if isinstance(model, (str, os.PathLike)):
            source = source or os.fspath(model)
            model = read_file(model)  # read once (bounded), shared by every worker's interpreter

        def new():
            return make_interpreter(model, runtime=runtime, num_threads=num_threads,
                                    xnnpack=xnnpack, preserve_all_tensors=preserve_all_tensors,
                                    source=source)

        self.interpreter = new()
        self._preserve = preserve_all_tensors
        self.runtime = resolve_runtime(runtime)[0]
        details = self.interpreter.get_input_details()
        self.inputs = [TensorSpec.from_details(d) for d in details]
        self.outputs = [TensorSpec.from_details(d) for d in self.interpreter.get_output_details()]
        # the names each input is fed by (its signature name = the Keras input name)
        self.slots = feeding.slots_of_interpreter(self.interpreter, details)
        self.output_names = _output_names(self.interpreter, self.outputs)
        self.source = source
        self.batch_size = int(batch_size) or auto_batch_size(self.interpreter)
        self._workers = [_Worker(self.interpreter, self.inputs, self.outputs)]
        self._workers += [_Worker(new(), self.inputs, self.outputs) for _ in range(workers - 1)]
        self._pool = None  # threads for the workers, made on first parallel run and kept

    def _executor(self):
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(len(self._workers), thread_name_prefix="litert")
            weakref.finalize(self, self._pool.shutdown, wait=False)
        return self._pool

    # -- data conversion ------------------------------------------------------------------
    @staticmethod
    def prepare_input(spec: TensorSpec, x: np.ndarray) -> np.ndarray:
        """Float data -> the tensor's dtype (quantized with its scale/zero point if integer)."""
        x = np.asarray(x)
        if spec.dtype.kind == "f":
            return x.astype(spec.dtype, copy=False)
        if x.dtype == spec.dtype:  # already quantized by the caller
            return x
        if spec.quant is None:
            return x.astype(spec.dtype)
        return spec.quant.quantize(x)

    @staticmethod
    def read_output(spec: TensorSpec, y: np.ndarray, dequantize: bool = True,
                    copy: bool = True) -> np.ndarray:
        if dequantize and spec.quant is not None:
            return spec.quant.dequantize(y)
        return np.array(y, copy=True) if copy else y

    # -- running --------------------------------------------------------------------------
    def arrays(self, xs) -> list[np.ndarray]:
        """``xs`` (an array, arrays in input order, or {input name: array}) in input order;
        a dict is matched by name (tflite/feeding.py)."""
        arrays = [xs] if isinstance(xs, np.ndarray) else xs
        if isinstance(xs, dict) or len(arrays) != len(self.slots):  # the error names inputs
            return feeding.order(self.slots, arrays, self.source or "")
        return list(arrays)

    def run(self, xs, *, dequantize: bool = True,
            batch_size: int | None = None) -> list[np.ndarray]:
        """Run every sample; return one array per output (interpreter output order).
        ``xs``: an array, arrays in input order, or {input name: array}."""
        arrays = self.arrays(xs)
        n = len(arrays[0])
        if any(len(a) != n for a in arrays):
            raise UsageError("Input arrays differ in length", [len(a) for a in arrays],
                             "Pass arrays with the same number of samples")
        if n == 0:
            return [np.zeros((0, *s.shape[1:]), np.float32) for s in self.outputs]
        prepared = [self.prepare_input(s, a) for s, a in zip(self.inputs, arrays)]
        batch = max(1, min(batch_size or self.batch_size, n))
        workers = self._workers[: max(1, min(len(self._workers), -(-n // batch)))]
        if len(workers) > 1:
            shard = -(-n // len(workers))
            batch = -(-shard // -(-shard // batch))  # equal invokes per shard: least padding
        # allocate here, in this thread: LiteRT prints "Created ... XNNPACK delegate" straight
        # to fd 2 on first allocation, and silencing fds is not safe from the pool's threads
        if any(w.batch != batch for w in workers):
            with quiet_native_output():
                for w in workers:
                    w.allocate(batch)
        if len(workers) == 1:
            parts = [workers[0].run_range(prepared, 0, n, batch, dequantize)]
        else:
            bounds = [(k * shard, min(n, (k + 1) * shard)) for k in range(len(workers))]
            parts = list(self._executor().map(
                lambda wb: wb[0].run_range(prepared, wb[1][0], wb[1][1], batch, dequantize),
                zip(workers, bounds)))
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate([part[k] for part in parts]) for k in range(len(self.outputs))]

    def run_with_tensors(self, x: np.ndarray | Sequence[np.ndarray], indices: Sequence[int],
                         *, dequantize: bool = True) -> tuple[list[np.ndarray], dict]:
        """Outputs plus the (dequantized) values of intermediate tensors ``indices``.

        Needs ``preserve_all_tensors=True`` (otherwise LiteRT reuses intermediate buffers and
        the values read after ``invoke`` are garbage)."""
        if not self._preserve:
            raise UsageError("Reading intermediate tensors needs preserve_all_tensors=True",
                             list(indices)[:5], "Create the ModelRunner with it")
        details = {d["index"]: d for d in self.interpreter.get_tensor_details()}
        extra = {}
        for i in indices:
            if i not in details:
                raise UsageError("No such tensor in the model", i, "Pass tensor indices "
                                 "from the model's own tensor list")
            extra[i] = TensorSpec.from_details(details[i])
        prepared = [self.prepare_input(s, a) for s, a in zip(self.inputs, self.arrays(x))]
        n = len(prepared[0])
        merged = self._workers[0].run_range(prepared, 0, n, max(1, min(self.batch_size, n)),
                                            dequantize, extra)
        k = len(self.outputs)
        return merged[:k], dict(zip(extra, merged[k:]))

    def output_index(self, name: str) -> int:
        """The position of the output ``name`` (its signature name = the Keras output name,
        or its tensor name); "" is the first output."""
        if not name:
            return 0
        k = output_position(self.output_names, name)
        if k is not None:
            return k
        for k, spec in enumerate(self.outputs):
            if name == spec.name:
                return k
        raise UsageError("The model has no output of that name", name,
                         f"Use one of {', '.join(n or s.name for n, s in zip(self.output_names, self.outputs))}")

    def describe(self) -> dict:
        doc = {"runtime": self.runtime,
               "inputs": [s.to_dict() for s in self.inputs],
               "outputs": [s.to_dict() for s in self.outputs]}
        if len(self.inputs) > 1 or len(self.outputs) > 1:  # what feeds / reads each, by name
            doc["input_names"] = [s.name for s in self.slots]
            doc["output_names"] = list(self.output_names)
        return doc


def _output_names(interpreter, outputs: list[TensorSpec]) -> list[str]:
    """The signature name of each output ("" where there is none)."""
    try:
        key = next(iter(interpreter.get_signature_list() or {}), None)
        named = interpreter.get_signature_runner(key).get_output_details() if key else {}
        by_index = {int(d["index"]): n for n, d in named.items()}
    except Exception:  # no signatures: tensor names only
        by_index = {}
    return [by_index.get(s.index, "") for s in outputs]
