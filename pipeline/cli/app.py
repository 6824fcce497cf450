"""Command line: ``qat run | convert | verify | inspect`` (also ``python -m pipeline``).

``parse_args(argv)`` is separate from ``main(args) -> int``; the console script exits with that
code: 0 ok, 1 a quality gate failed, 2 bad input or usage, 3 internal error (a bug). Errors are
one line on stderr; ``--debug`` adds the traceback. Progress goes to stderr so that ``--json``
leaves stdout to the machine-readable result.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback

from pipeline import __version__
from pipeline.cli import commands, plan_cmd
from pipeline.core.errors import (EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, EXIT_INTERNAL,
                                  EXIT_INTERRUPTED, QatError, first_line)
from pipeline.core.records import RUNTIME_AUTO, Runtime, Variant

COMMANDS = {**commands.COMMANDS, "plan": plan_cmd.cmd_plan}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qat", description="Keras model -> QAT fine-tune -> full-int8 LiteRT model, "
        "verified against Keras.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_run, _add_plan, _add_convert, _add_verify, _add_inspect):
        _common(add(sub))
    return parser


def _add_run(sub) -> argparse.ArgumentParser:
    r = sub.add_parser("run", help="the main job: annotate, fine-tune, convert, verify, report",
                       description="Run the whole pipeline. RECIPE is a TOML file or a bundled "
                       "model name (e.g. digits_cnn); flags override it.")
    _config_args(r)
    r.add_argument("--resume", action="store_true",
                   help="continue the unfinished (or finished) run from its last checkpoint")
    return r


def _add_plan(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("plan", help="mixed precision under an accuracy budget: a recipe",
                       description="Measure each layer's accuracy cost at 4-bit weights on the "
                       "validation split, pick 4-bit / 8-bit / float per layer within "
                       "--max-accuracy-drop, and write the plan as a recipe for `qat run`.")
    _config_args(p)
    p.add_argument("--max-accuracy-drop", type=float, required=True, metavar="PP",
                   help="accuracy the plan may lose vs the float model, in percentage points "
                   "(validation split; the recipe's gate holds the run to it on the test split)")
    p.add_argument("--rule", choices=["ci95", "point"], default="ci95",
                   help="how a plan's drop is judged: the upper end of its paired 95 %% "
                   "interval (default; safe on small validation splits) or the measured drop")
    p.add_argument("--ptq", action="store_true",
                   help="plan post-training quantization per op instead (ai-edge-quantizer: "
                   "int4 / int8 / 16x8 / float per op, measured with LiteRT); the recipe "
                   "adds it to the run as aeq_mixed beside QAT")
    p.add_argument("--recipe-out", metavar="FILE",
                   help="where to write the plan's recipe (default: <run name>_plan.toml); a "
                   "JSON of the measurements goes beside it")
    return p


def _config_args(r: argparse.ArgumentParser) -> None:
    """The arguments that make a run's Config (run, plan)."""
    r.add_argument("recipe", nargs="?", help="TOML recipe or zoo model name")
    r.add_argument("--model", help="zoo model name or a Keras-2 model file (.h5/.keras/SavedModel)")
    r.add_argument("--data", help="zoo dataset name or an .npz (x_train, y_train, x_test, y_test)")
    r.add_argument("--output", help="artifacts root directory (default: artifacts)")
    r.add_argument("--name", help="run directory name (default: the model name)")
    r.add_argument("--epochs", type=int, help="QAT epochs (qat.epochs)")
    r.add_argument("--seed", type=int, help="seed for everything random (seed)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set qat.learning_rate=5e-5 (repeatable)")
    r.add_argument("--trust-model", action="store_true",
                   help="allow Lambda layers (their stored Python code runs on load)")
    r.add_argument("-q", "--quiet", action="store_true", help="no Keras progress bars")


def _add_convert(sub) -> argparse.ArgumentParser:
    f, p, q = Variant.FLOAT32, Variant.PTQ_INT8, Variant.QAT_INT8
    c = sub.add_parser("convert", help="convert a Keras model file to .tflite variants",
                       description=f"Convert a float Keras model ({f}, {p}) or a saved "
                       f"QAT model ({q}, or {Variant.QAT_W4A8} for 4-bit weights) and "
                       "inspect each result.")
    c.add_argument("model", help="Keras-2 model file (.h5/.keras/SavedModel directory)")
    c.add_argument("--data", required=True,
                   help="zoo dataset name or .npz; its train split calibrates int8 variants")
    c.add_argument("--variants", help=f"comma list of {', '.join(Variant.names())} "
                   f"(default: {f},{p} for a float model, {q} for a QAT model)")
    c.add_argument("--io", choices=["int8", "float"], default="int8",
                   help="input/output tensor type of int8 variants (default int8)")
    c.add_argument("--representative-samples", type=int, default=200)
    c.add_argument("--output", default=".", help="directory for the .tflite files")
    c.add_argument("--allow-float", action="store_true",
                   help="do not fail (exit 1) when an int8 variant is not full-int8")
    c.add_argument("--aeq-recipe", metavar="FILE",
                   help="aeq_mixed's per-op ai-edge-quantizer recipe (`qat plan --ptq`)")
    c.add_argument("--trust-model", action="store_true")
    c.add_argument("--seed", type=int, default=0)
    return c


def _add_verify(sub) -> argparse.ArgumentParser:
    v = sub.add_parser(
        "verify", help="check a .tflite: accuracy on data, layer parity, or a reference bundle",
        description="Run a .tflite with the LiteRT interpreter (in a child process by default, "
        "so a corrupt file cannot crash this one). With --data: accuracy over a dataset split "
        "(batched). With --reference DIR: compare with the expected outputs the pipeline saved "
        "(needs only numpy and ai-edge-litert). With --layers: layer-by-layer parity against "
        "the Keras QAT model.")
    v.add_argument("model", help=".tflite file")
    v.add_argument("--data", help="zoo dataset name or .npz")
    v.add_argument("--reference", metavar="DIR",
                   help="run directory (or its reference/ folder) written by `qat run`")
    v.add_argument("--variant", help="which variant of the reference this model is "
                   "(default: matched by sha256, then by file name)")
    v.add_argument("--tolerance-lsb", type=float,
                   help="max int8 output difference vs the reference (default 1)")
    v.add_argument("--layers", action="store_true",
                   help="layer-by-layer parity with the Keras QAT model (needs TensorFlow)")
    v.add_argument("--keras", metavar="QAT_MODEL",
                   help="Keras QAT model for --layers (default: keras/qat_model.h5 beside "
                   "the .tflite)")
    v.add_argument("--threshold-lsb", type=float, default=1.0,
                   help="--layers: mean error above which a layer diverges (default 1)")
    v.add_argument("--split", choices=["test", "train"], default="test")
    v.add_argument("--batch-size", type=int, default=0,
                   help="samples per invoke (default 0: cache-sized, at most 256)")
    v.add_argument("--runtime", default=RUNTIME_AUTO, choices=Runtime.names())
    v.add_argument("--num-threads", type=int, default=0)
    v.add_argument("--workers", type=int, default=0,
                   help="interpreters run in parallel over shards with --no-isolate "
                   "(0 = one per core)")
    v.add_argument("--no-isolate", action="store_true",
                   help="run the interpreter in this process (only for files you trust)")
    v.add_argument("--timeout", type=float, default=60.0,
                   help="seconds the structural pre-check, and each request to the isolated "
                   "interpreter, may take (default 60)")
    v.add_argument("--min-accuracy", type=float,
                   help="exit 1 if accuracy is below this fraction")
    v.add_argument("--require-full-int8", action="store_true",
                   help="exit 1 if the model is not full-int8")
    return v


def _add_inspect(sub) -> argparse.ArgumentParser:
    i = sub.add_parser("inspect", help="what is inside a .tflite (no TensorFlow needed), or "
                       "a Keras model's QAT coverage (--coverage)",
                       description="Ops, tensors by dtype, inputs/outputs with quantization, "
                       "signatures, size breakdown and the full-int8 verdict with its reasons. "
                       "With --coverage MODEL (a Keras model file or zoo name): for each layer, "
                       "whether tfmot quantizes it, passes it through, or needs a fallback.")
    i.add_argument("model", help=".tflite file (or a Keras model with --coverage)")
    i.add_argument("--coverage", action="store_true",
                   help="QAT coverage of a Keras model (.h5/.keras/SavedModel or zoo name)")
    i.add_argument("--trust-model", action="store_true",
                   help="--coverage: allow Lambda layers (their stored code runs on load)")
    i.add_argument("--allow-float-io", action="store_true",
                   help="judge full-int8 allowing float model inputs/outputs")
    i.add_argument("--require-full-int8", action="store_true",
                   help="exit 1 if the model is not full-int8")
    i.add_argument("--tensors", action="store_true", help="list every tensor")
    return i


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt(enabled: bool):
    """``verify``: SIGTERM unwinds like Ctrl-C, so the isolated child is stopped (its own
    watchdog covers SIGKILL of this process)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(args: argparse.Namespace) -> int:
    out = sys.stdout
    with _sigterm_as_interrupt(args.command == "verify"):
        return _main(args, out)


def _main(args: argparse.Namespace, out) -> int:
    try:
        # --json: stdout carries only the result; progress (Keras bars included) goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            return COMMANDS[args.command](args, out)
    except QatError as exc:
        if args.debug:
            traceback.print_exc()
        _log(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _log("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `qat inspect x | head`: the reader left; behave like SIGPIPE
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: say so, one line unless --debug
        if args.debug:
            traceback.print_exc()
        _log(f"internal error: {type(exc).__name__}: {first_line(exc, 300, empty='')} "
             "(rerun with --debug for the traceback)")
        return EXIT_INTERNAL


def console_main() -> None:
    argv = sys.argv[1:]
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or usage error (2)
        raise SystemExit(exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT)
    sys.exit(main(args))
