"""The strongest post-training peer: ai-edge-quantizer's full-int8 PTQ (variant ``aeq_int8``).

ai-edge-quantizer (Google AI Edge's quantizer for LiteRT models, the ``zoo`` extra) quantizes a
float32 .tflite directly. Here: its ``recipe.static_wi8_ai8()`` (static range: int8 weights,
symmetric, per channel; int8 activations, asymmetric; algorithm ``min_max_uniform_quant``),
calibrated through ``Quantizer.calibrate`` on the *same* samples the converter's ``ptq_int8``
is calibrated on (``convert.representative_samples`` of the train split, drawn by
data.representative_sample with the run's seed, in the same order, one sample per step as
its documentation feeds them), so the two PTQs differ only in the tool. Its activation ranges
are its own default: each sample's min/max, combined by a moving average (smoothing 0.95).
ai-edge-quantizer chooses the input/output types itself (int8 with this recipe); the report
shows them, and the full-int8 verdict judges the file like any other.

The 4-bit peers (``W4_PEERS``) use the same tool at 4-bit weights: ``aeq_w4a8`` /
``aeq_w4a8_mse`` (static: int8 activations, the precision of qat_w4a8, compared with it) and
``aeq_w4afp32`` / ``aeq_w4afp32_mse`` (its weight-only recipe ``weight_only_wi4_afp32``: INT4
weights, each dequantized by a DEQUANTIZE op before its op, which computes in float; no
calibration). A weight-only file is not full-integer by design; it is reported beside QAT
as the other way to a 4-bit file, not compared as its PTQ.

The peer is compared, never gated on (gates.evaluate skips peers). Importing
ai_edge_quantizer 0.10 does not import TensorFlow (it runs models with ai-edge-litert;
tests/pipeline/stages/test_peers.py checks it), so no keras_env.load() is needed before it.

``convert.variants`` listing ``aeq_int8`` asks for it: without the package that is a one-line
exit 2 before any training, and a quantization it fails is the run's error. ``convert.peers =
"auto"`` (the default) adds it to zoo runs that convert ``ptq_int8`` when the package is
installed, and logs a note when it is not; a model it fails to quantize is then noted in the
log and the report (``ptq_calibration.failed_peers``), and the run goes on without it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import warnings
from importlib import metadata as md
from pathlib import Path

import numpy as np

from pipeline.core.errors import ConfigError, ConversionError, first_line
from pipeline.core.native import quiet_native_output
from pipeline.core.records import Variant
from pipeline.tflite.tflite_model import TFLiteModel

PACKAGE = "ai-edge-quantizer"
MODULE = "ai_edge_quantizer"
RECIPE = "static_wi8_ai8"
# aeq_w4a8: static INT4 weights (per channel, symmetric) with int8 activations; ops its static
# 4-bit recipe does not quantize (DEPTHWISE_CONV_2D, measured with 0.10: left float between
# DEQUANTIZE/QUANTIZE, although LiteRT runs the converter's INT4 depthwise) keep int8
# weights, so the file stays full-int8.
W4_INT8_OPS = ("DEPTHWISE_CONV_2D",)
INSTALL = "pip install 'qat-deploy[zoo]' (in a checkout: make venv)"
PEERS = tuple(v for v in Variant if v.is_peer)
# ai-edge-quantizer's algorithm for each peer's weights. MSE: each weight scale chosen for
# the least squared error (measured with 0.10 on kws_dscnn: +1.7 pp over min/max at 4 bits).
# Its GPTQ and Hadamard-rotation algorithms were measured too and left out: in 0.10 they
# quantize FULLY_CONNECTED only, so a CNN's convs stay float (files near float32's size).
ALGORITHMS = {Variant.AEQ_INT8: "MIN_MAX_UNIFORM_QUANT", Variant.AEQ_W4A8: "MIN_MAX_UNIFORM_QUANT",
              Variant.AEQ_W4A8_MSE: "MSE", Variant.AEQ_W4AFP32: "MIN_MAX_UNIFORM_QUANT",
              Variant.AEQ_W4AFP32_MSE: "MSE",
              Variant.AEQ_MIXED: "MIN_MAX_UNIFORM_QUANT"}  # its AlgorithmName members
# the peers auto-added before qat_w4a8: the static ones (its precision, compared) and the
# weight-only ones (float activations: reported beside it, a smaller-file alternative)
W4_PEERS = (Variant.AEQ_W4A8, Variant.AEQ_W4A8_MSE, Variant.AEQ_W4AFP32,
            Variant.AEQ_W4AFP32_MSE)


def available() -> bool:
    """ai-edge-quantizer is importable (found, not imported)."""
    return importlib.util.find_spec(MODULE) is not None


def version() -> str | None:
    try:
        return md.version(PACKAGE)
    except md.PackageNotFoundError:
        return None


def require(why: str = "convert.variants lists aeq_int8",
            variant: Variant = Variant.AEQ_INT8) -> None:
    """A one-line exit 2 when the peer was asked for and the package is missing."""
    if not available():
        raise ConversionError(f"The {variant} variant needs {PACKAGE}, which is not "
                              "installed", why, f"{INSTALL}, or remove {variant} "
                              "from convert.variants")


def resolve(variants: tuple[Variant, ...], peers: str, zoo: bool, log) -> tuple[Variant, ...]:
    """The variants a run converts: the configured ones (a listed peer must be installed),
    plus, with ``peers == "auto"`` on a zoo model, the installed peer of each precision it
    converts: aeq_int8 right after ptq_int8, the 4-bit ones (W4_PEERS) right before qat_w4a8
    (a missing one is skipped with a logged note)."""
    for v in variants:
        if v.is_peer:
            require(f"convert.variants lists {v}", v)
    if peers != "auto" or not zoo:
        return variants
    out = list(variants)
    # (the variant it is a peer of, the peer): the 4-bit peer is QAT w4a8's comparison
    for after, peer in ((Variant.PTQ_INT8, Variant.AEQ_INT8),
                        *((Variant.QAT_W4A8, p) for p in W4_PEERS)):
        if after not in out or peer in out:
            continue
        if not available():
            log(f"convert: {peer} skipped: {PACKAGE} is not installed ({INSTALL} adds this "
                "PTQ peer)")
            continue
        at = out.index(after)
        out.insert(at + 1 if after is Variant.PTQ_INT8 else at, peer)
    return tuple(out)


def _samples(sig: dict, representative, variant: Variant) -> list[dict]:
    """One {signature input name: (1, ...) array} per sample. ``representative``: an array
    (a one-input model) or {input name: array} (the signature's names are the Keras input
    names)."""
    def typed(a) -> np.ndarray:
        a = np.asarray(a)
        return a if a.dtype.kind in "iu" else a.astype(np.float32)

    names = list(sig["inputs"])
    if isinstance(representative, dict):
        missing = sorted(set(names) - set(representative))
        if missing:
            raise ConversionError(f"{variant} calibration data lacks model inputs",
                                  f"missing {missing}, have {sorted(representative)}",
                                  "Give one array per model input, keyed by its name")
        arrays = {n: typed(representative[n]) for n in names}
    elif len(names) == 1:
        arrays = {names[0]: typed(representative)}
    else:
        raise ConversionError(f"{variant} needs one calibration array per input",
                              f"one array for inputs {names}",
                              "Give {input name: array} for a model with several inputs")
    n = len(next(iter(arrays.values())))
    return [{k: v[i: i + 1] for k, v in arrays.items()} for i in range(n)]


def _recipe(variant: Variant):
    # lazy: the zoo extra, not in core/qat
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe, recipe_manager

    if variant is Variant.AEQ_INT8:
        return getattr(recipe, RECIPE)()
    rp = recipe_manager.RecipeManager()
    names = algorithm_manager.AlgorithmName
    algo = getattr(names, ALGORITHMS[variant])
    ops = qtyping.TFLOperationName
    if variant.is_weight_only:  # its weight_only_wi4_afp32() recipe, depthwise at 8 bits
        rp.add_weight_only_config(regex=".*", operation_name=ops.ALL_SUPPORTED, num_bits=4,
                                  algorithm_key=algo)
        for op in W4_INT8_OPS:
            rp.add_weight_only_config(regex=".*", operation_name=getattr(ops, op), num_bits=8,
                                      algorithm_key=names.MIN_MAX_UNIFORM_QUANT)
        return rp.get_quantization_recipe()
    rp.add_static_config(regex=".*", operation_name=ops.ALL_SUPPORTED,
                         activation_num_bits=8, weight_num_bits=4, algorithm_key=algo)
    for op in W4_INT8_OPS:
        rp.add_static_config(regex=".*", operation_name=getattr(ops, op),
                             activation_num_bits=8, weight_num_bits=8,
                             algorithm_key=names.MIN_MAX_UNIFORM_QUANT)
    return rp.get_quantization_recipe()


def quantize(float_tflite: bytes, representative, variant: Variant = Variant.AEQ_INT8, *,
             recipe: list[dict] | None = None, ranges: dict | None = None) -> bytes:
    """The peer ``variant`` (one of PEERS) from the float32 .tflite, calibrated on
    ``representative`` ((N, ...) array, or {input name: (N, ...) array} for a model with
    several inputs; a weight-only peer has no activation to calibrate and ignores it).
    aeq_mixed takes its ai-edge-quantizer ``recipe`` (load_recipe; `qat plan --ptq`).
    ``ranges``: activation ranges calibrate() measured on the same float model and samples,
    reused instead of calibrating again (a plan scores many recipes of one model)."""
    if (variant is Variant.AEQ_MIXED) != (recipe is not None):
        raise ConversionError("A per-op recipe goes with aeq_mixed only",
                              f"{variant}, recipe {'given' if recipe else 'missing'}",
                              "Set convert.aeq_recipe (qat convert: --aeq-recipe) to the JSON "
                              "`qat plan --ptq` wrote")
    if recipe is not None:
        _check_rules(float_tflite, recipe)
    return _run(float_tflite, representative, variant, recipe or _recipe(variant), ranges)


def calibrate(float_tflite: bytes, representative) -> dict:
    """ai-edge-quantizer's activation ranges of the float model on ``representative`` (every
    tensor, as its static int8 recipe calibrates them), for quantize(ranges=...)."""
    return _run(float_tflite, representative, Variant.AEQ_INT8, _recipe(Variant.AEQ_INT8),
                None, ranges_only=True)


def _run(float_tflite: bytes, representative, variant: Variant, recipe, ranges,
         ranges_only: bool = False):
    require(f"{variant} was asked for", variant)
    calibrated = not variant.is_weight_only and ranges is None
    if calibrated and (representative is None or len(representative) == 0):
        raise ConversionError(f"{variant} needs a representative dataset", "0 samples",
                              "Set convert.representative_samples >= 1")
    from ai_edge_litert import interpreter as tfl  # lazy: only with the zoo extra's peer
    from ai_edge_quantizer import quantizer  # lazy: the zoo extra, not in core/qat

    sigs = tfl.Interpreter(model_content=float_tflite).get_signature_list()
    if len(sigs) != 1:
        raise ConversionError(f"{variant} needs a model with one signature",
                              f"signatures {sigs}", f"Drop {variant} for this model")
    key, sig = next(iter(sigs.items()))
    samples = _samples(sig, representative, variant) if calibrated else None
    try:
        # its progress bars go to stderr, LiteRT's delegate lines to the C++ streams, and
        # "experimental_preserve_all_tensors is for debugging" is its calibrator's own choice
        with warnings.catch_warnings(), quiet_native_output(), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore", UserWarning)
            q = quantizer.Quantizer(bytearray(float_tflite), recipe)
            if calibrated:
                ranges = q.calibrate({key: samples})
            if ranges_only:
                return ranges
            result = q.quantize(ranges, enable_progress_report=False)
    except Exception as exc:  # its internals raise ValueError, RuntimeError, KeyError, ...
        raise ConversionError(f"{PACKAGE} failed to quantize the float32 model",
                              first_line(exc, 300), f"Drop {variant} for this model")
    return bytes(result.quantized_model)


def op_scopes(sg) -> list[tuple[str, object]]:
    """(scope, op) of each op of the subgraph ``sg`` (TFLiteModel.main) that has named
    outputs: ai-edge-quantizer's scope, the op's output tensor names joined by ";" with a
    trailing ";" (what its recipe regexes are matched against)."""
    out = []
    for op in sg.operators:
        names = [sg.tensors[i].name for i in op.outputs if i >= 0 and sg.tensors[i].name]
        if names:
            out.append((";".join(names) + ";", op))
    return out


def _check_rules(float_tflite: bytes, recipe: list[dict]) -> None:
    """Every per-op rule of an aeq_mixed recipe selects an op of this model (a recipe planned
    for another model, or an edited regex, would otherwise leave ops silently at int8)."""
    sg = TFLiteModel.from_bytes(float_tflite, source="float32.tflite").main
    scopes = [sc for sc, _ in op_scopes(sg)]
    dead = [r["regex"] for r in recipe
            if r["regex"] != ".*" and not any(re.search(r["regex"], sc) for sc in scopes)]
    if dead:
        raise ConversionError(f"{len(dead)} aeq_mixed recipe rule(s) match no op of this model",
                              dead[0][:160], "Plan it for this model (`qat plan --ptq`), or fix "
                              "the regex in convert.aeq_recipe")


def load_recipe(path: str) -> list[dict]:
    """An ai-edge-quantizer recipe (a JSON list of per-regex configs, as `qat plan --ptq`
    writes it); a missing or malformed file is a one-line exit 2."""
    import json
    from pathlib import Path

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError("convert.aeq_recipe cannot be read", f"{path}: {first_line(exc, 200)}",
                          "Point it at the .aeq.json `qat plan --ptq` wrote")
    if not isinstance(doc, list) or not all(isinstance(r, dict) and "regex" in r for r in doc):
        raise ConfigError("convert.aeq_recipe is not an ai-edge-quantizer recipe", path,
                          "It is a JSON list of {regex, operation, algorithm_key, op_config}")
    return doc


def describe(samples: int, variant: Variant = Variant.AEQ_INT8) -> dict:
    """What report.json says about how the peer was made."""
    int8_ops = f"{', '.join(W4_INT8_OPS)}: 8-bit weights"
    recipe = RECIPE if variant is Variant.AEQ_INT8 else \
        "per op, from convert.aeq_recipe (qat plan --ptq): int4 / int8 / 16x8 / float" \
        if variant is Variant.AEQ_MIXED else \
        f"weight_only num_bits=4, float activations and compute ({int8_ops})" \
        if variant.is_weight_only else \
        f"static weight_num_bits=4 activation_num_bits=8 ({int8_ops})"
    calibration = "none: weight-only, activations stay float" if variant.is_weight_only \
        else (f"{samples} samples, one per step, the same as ptq_int8's; ranges: per-sample "
              "min/max, moving average (smoothing 0.95)")
    return {"variant": variant.value, "tool": PACKAGE, "version": version(),
            "recipe": recipe, "algorithm": ALGORITHMS[variant].lower(),
            "calibration": calibration, "source": "float32.tflite"}
