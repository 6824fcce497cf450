"""Run configuration: one frozen dataclass per concern, loaded from a TOML recipe plus overrides.

Unknown keys fail with a "did you mean" suggestion; values are type-checked and validated in
``__post_init__``; the resolved config round-trips to TOML (``to_toml``) and is saved next to the
artifacts. Reading the TOML text and type-checking single values live in recipe.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from pipeline.core.errors import ConfigError
from pipeline.core.records import RUNTIME_AUTO, Runtime, Variant
from pipeline.stages import recipe as recipe_io
from pipeline.stages.metrics import TASKS


def _check(cond: bool, what: str, received: object, fix: str) -> None:
    if not cond:
        raise ConfigError(what, received, fix)


@dataclass(frozen=True)
class ModelConfig:
    name: str = ""           # a model of the bundled zoo (models/), or
    path: str = ""           # a Keras-2 file: .h5, tf_keras .keras, or a SavedModel directory
    trust_model: bool = False  # allow Lambda layers (their Python code runs on load)
    # Zoo models ship as architectures: their float baseline is trained first.
    float_epochs: int = 60
    float_learning_rate: float = 3e-3
    float_batch_size: int = 32

    def __post_init__(self):
        _check(bool(self.name) != bool(self.path), "Exactly one of model.name and model.path "
               "must be set", f"name={self.name!r}, path={self.path!r}",
               "Pass a zoo name (--model digits_cnn) or a model file (--model model.h5)")
        _check(self.float_epochs >= 1, "model.float_epochs must be at least 1",
               self.float_epochs, "Set model.float_epochs = 1 or more")
        _check(self.float_learning_rate > 0, "model.float_learning_rate must be positive",
               self.float_learning_rate, "Set e.g. model.float_learning_rate = 0.003")
        _check(self.float_batch_size >= 1, "model.float_batch_size must be at least 1",
               self.float_batch_size, "Set model.float_batch_size = 32")


@dataclass(frozen=True)
class DataConfig:
    name: str = ""           # a zoo dataset, or
    path: str = ""           # an .npz with x_train, y_train, x_test, y_test
    validation_split: float = 0.1  # taken (stratified) from the train split for early stopping
    # zoo datasets only: how many train / test samples (0: the dataset's own sizes); generated
    # datasets are generated at that size and cached under output.dir/.data/
    train_samples: int = 0
    test_samples: int = 0
    # what the model predicts, hence its metrics and gates (pipeline/stages/metrics.py):
    # auto (from the output's rank and the targets) | classification (top-1 over (N, C)) |
    # sequence (per-token logits (N, T, V), integer targets (N, T): token accuracy,
    # cross-entropy, perplexity) | regression (float targets: MSE, MAE)
    task: str = "auto"
    # a model with several outputs: the one scored (its Keras name; "" = the first); the
    # others are compared by their output error in LSB
    output: str = ""

    def __post_init__(self):
        _check(not (self.name and self.path), "Only one of data.name and data.path may be set",
               f"name={self.name!r}, path={self.path!r}", "Remove one of them")
        _check(0.0 < self.validation_split < 0.5, "data.validation_split must be in (0, 0.5)",
               self.validation_split, "Use e.g. data.validation_split = 0.1")
        for key in ("train_samples", "test_samples"):
            _check(getattr(self, key) >= 0, f"data.{key} must be >= 0", getattr(self, key),
                   "Use 0 for the dataset's own size, or a sample count")
        _check(self.task in TASKS, "Unknown data.task", self.task,
               f"Use one of {', '.join(TASKS)}")
        _check(not (self.path and (self.train_samples or self.test_samples)),
               "data.train_samples / data.test_samples apply to zoo datasets only",
               self.path, "Slice the .npz yourself, or use a zoo dataset name")


@dataclass(frozen=True)
class QatConfig:
    # QAT starts from a trained model: a small learning rate decayed to 10 % keeps it near the
    # float optimum (tfmot's QAT guide fine-tunes for a few epochs at a low rate).
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 3e-5
    lr_schedule: str = "cosine"   # cosine | constant
    early_stopping_patience: int = 3
    monitor: str = "val_loss"  # val_loss | val_accuracy (accuracy ties on small splits)
    # activation ranges start from this many training samples instead of tfmot's [-6, 6]
    # (pipeline/keras/ranges.py); 0 keeps tfmot's initial ranges
    range_init_samples: int = 256
    verbose: int = -1  # Keras fit verbosity; -1 = progress bar on a terminal, one line per epoch otherwise

    def __post_init__(self):
        _check(self.epochs >= 1, "qat.epochs must be at least 1", self.epochs,
               "Set qat.epochs = 1 or more")
        _check(self.batch_size >= 1, "qat.batch_size must be at least 1", self.batch_size,
               "Set qat.batch_size = 32")
        _check(0 < self.learning_rate < 1, "qat.learning_rate must be in (0, 1)",
               self.learning_rate, "QAT fine-tuning wants a small rate, e.g. 3e-5")
        _check(self.lr_schedule in ("cosine", "constant"), "Unknown qat.lr_schedule",
               self.lr_schedule, "Use 'cosine' or 'constant'")
        _check(self.range_init_samples >= 0, "qat.range_init_samples must be >= 0",
               self.range_init_samples, "Use e.g. 256, or 0 to keep tfmot's [-6, 6] start")
        _check(self.early_stopping_patience >= 0, "qat.early_stopping_patience must be >= 0",
               self.early_stopping_patience, "Use 0 to disable early stopping")
        _check(self.monitor in ("val_accuracy", "val_loss"), "Unknown qat.monitor",
               self.monitor, "Use 'val_accuracy' or 'val_loss'")
        _check(self.verbose in (-1, 0, 1, 2), "qat.verbose must be -1, 0, 1 or 2",
               self.verbose, "Use -1 for automatic")


@dataclass(frozen=True)
class AnnotateConfig:
    """Which layers QAT annotates. Patterns are regular expressions that must match a layer's
    whole name or its class name (e.g. "block3_.*", "Dense"); a pattern matching nothing is
    an error, so a typo cannot silently change the model."""

    include: tuple[str, ...] = ()     # only these are annotated (empty: all)
    exclude: tuple[str, ...] = ()     # never annotated (the converter still makes them int8)
    keep_float: tuple[str, ...] = ()  # not annotated and left float32 in the int8 .tflite
    fallbacks: bool = True            # QuantizeConfigs for layers tfmot refuses
    # qat_w4a8 only: these layers keep 8-bit weights, the others get 4 (a mixed-precision
    # plan; `qat plan` writes one from measured per-layer sensitivity)
    int8_weights: tuple[str, ...] = ()

    def __post_init__(self):
        for key in ("include", "exclude", "keep_float", "int8_weights"):
            for pattern in getattr(self, key):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(f"annotate.{key} has an invalid regular expression",
                                      repr(pattern), f"Fix it ({exc})")


# The variants a run converts unless convert.variants says otherwise; the PTQ peer (aeq_int8)
# joins them through convert.peers.
DEFAULT_VARIANTS = (Variant.FLOAT32, Variant.PTQ_INT8, Variant.QAT_INT8)
PEERS_MODES = ("auto", "off")


@dataclass(frozen=True)
class ConvertConfig:
    variants: tuple[Variant, ...] = DEFAULT_VARIANTS  # listing aeq_int8 requires its package
    representative_samples: int = 200  # drawn from the train split, for PTQ calibration (both)
    io: str = "int8"  # int8 input/output tensors (phone-friendly) or float (QUANTIZE at the edges)
    # auto: zoo runs that convert ptq_int8 add the PTQ peer aeq_int8, and runs of qat_w4a8
    # the 4-bit peers aeq_w4a8 / aeq_w4a8_mse and the weight-only aeq_w4afp32 /
    # aeq_w4afp32_mse, when ai-edge-quantizer is installed (a note when not);
    # off: only convert.variants (stages/peers.py)
    peers: str = "auto"
    # aeq_mixed's per-op ai-edge-quantizer recipe (JSON), as `qat plan --ptq` writes it
    aeq_recipe: str = ""

    def __post_init__(self):
        for v in self.variants:
            _check(v in Variant.names(), "Unknown variant in convert.variants", v,
                   f"Use some of {', '.join(Variant.names())}")
        object.__setattr__(self, "variants", tuple(Variant(v) for v in self.variants))
        _check(len(self.variants) > 0, "convert.variants is empty", [], "List at least one")
        qat = [v.value for v in self.variants if v.is_qat]
        _check(len(qat) <= 1, "convert.variants lists more than one QAT variant", qat,
               "A run trains one QAT model: list qat_int8 (8-bit weights) or qat_w4a8 "
               "(4-bit weights), and make a second run for the other")
        _check(self.representative_samples >= 1, "convert.representative_samples must be >= 1",
               self.representative_samples, "Use e.g. 200")
        _check(self.io in ("int8", "float"), "Unknown convert.io", self.io,
               "Use 'int8' or 'float'")
        _check(self.peers in PEERS_MODES, "Unknown convert.peers", self.peers,
               "Use 'auto' (add aeq_int8 to zoo runs when installed) or 'off'")
        mixed = Variant.AEQ_MIXED in self.variants
        _check(mixed == bool(self.aeq_recipe), "aeq_mixed and convert.aeq_recipe go together",
               f"aeq_mixed {'listed' if mixed else 'not listed'}, aeq_recipe "
               f"{self.aeq_recipe!r}", "Write both with `qat plan --ptq`, or drop both")


@dataclass(frozen=True)
class VerifyConfig:
    batch_size: int = 0     # samples per invoke; 0 = auto (cache-sized, at most 256)
    runtime: str = RUNTIME_AUTO  # one of Runtime.names(): auto, litert, tflite_runtime, ...
    num_threads: int = 0    # 0 = the interpreter's default
    workers: int = 0        # interpreters run in parallel over shards; 0 = one per CPU core

    def __post_init__(self):
        _check(self.batch_size >= 0, "verify.batch_size must be 0 (auto) or more",
               self.batch_size, "Use 0 for a cache-sized batch, or e.g. 64")
        *others, last = Runtime.names()
        _check(self.runtime in Runtime.names(), "Unknown verify.runtime", self.runtime,
               f"Use {', '.join(others)} or {last}")
        _check(self.num_threads >= 0, "verify.num_threads must be >= 0", self.num_threads,
               "Use 0 for the default")
        _check(self.workers >= 0, "verify.workers must be >= 0", self.workers,
               "Use 0 for one per CPU core")


@dataclass(frozen=True)
class GatesConfig:
    """Each gate is in the task's metric (data.task); a gate set away from its default for a
    task it does not fit is a ConfigError naming the key (gates.check_task)."""

    max_accuracy_drop_pp: float = 1.0   # qat_int8.tflite vs Keras float, percentage points
    #                                     (token accuracy for sequence models)
    min_agreement: float = 0.99         # top-1 agreement Keras QAT vs qat_int8.tflite (per
    #                                     token for sequence models), ties counted (below)
    # a sample (token) agrees when the .tflite's top class is one Keras QAT scores within this
    # many output steps of its best: 0 counts exact ties on the int8 output grid only
    agreement_tolerance_lsb: float = 0.0
    require_full_int8: bool = True
    min_float_accuracy: float = 0.0     # classification and sequence (token accuracy)
    # sequence models: perplexity of qat_int8.tflite vs Keras float, % increase
    max_perplexity_increase_pct: float = 3.0
    # regression models: mean squared error of qat_int8.tflite vs Keras float, % increase
    max_mse_increase_pct: float = 5.0

    def __post_init__(self):
        for key in ("max_perplexity_increase_pct", "max_mse_increase_pct"):
            _check(getattr(self, key) >= 0, f"gates.{key} must be >= 0", getattr(self, key),
                   "Use a percentage, e.g. 3.0")
        _check(self.max_accuracy_drop_pp >= 0, "gates.max_accuracy_drop_pp must be >= 0",
               self.max_accuracy_drop_pp, "Use e.g. 1.0")
        _check(0 <= self.agreement_tolerance_lsb <= 8, "gates.agreement_tolerance_lsb must be "
               "in [0, 8]", self.agreement_tolerance_lsb, "Use 0 (ties only) or e.g. 1")
        _check(0 <= self.min_agreement <= 1, "gates.min_agreement must be in [0, 1]",
               self.min_agreement, "Use a fraction, e.g. 0.99")
        _check(0 <= self.min_float_accuracy <= 1, "gates.min_float_accuracy must be in [0, 1]",
               self.min_float_accuracy, "Use a fraction, e.g. 0.97")


_NAME_FIX = ("Use one plain directory name such as my_model (letters, digits, '_', '-', '.'; "
             "not starting with '.'); it is created inside output.dir")


def check_run_name(name: str, key: str = "output.name") -> None:
    """A run name is one plain path component that stays inside the output root: the run
    directory it names is replaced when the run completes, so '..', '/x', 'a/b' would replace
    a directory elsewhere."""
    _check(isinstance(name, str) and name.strip() != "", f"{key} is empty", repr(name), _NAME_FIX)
    bad = [c for c in name if c in "/\\\0" or ord(c) < 32 or ord(c) == 127]
    _check(not bad, f"{key} must be a single directory name (no path separators or control "
           "characters)", repr(name), _NAME_FIX)
    _check(not name.startswith("."), f"{key} must not start with '.' (hidden names and '..' "
           "are reserved for the run's staging and lock files)", repr(name), _NAME_FIX)
    _check(name == name.strip(), f"{key} must not start or end with whitespace", repr(name),
           _NAME_FIX)
    _check(len(name.encode("utf-8", "surrogateescape")) <= 200, f"{key} is too long",
           f"{len(name)} characters", "Use at most 200 bytes")
    _check(not os.path.isabs(name) and os.path.basename(name) == name,
           f"{key} must be a single directory name", repr(name), _NAME_FIX)


def safe_run_name(stem: str) -> str:
    """A run name derived from a file name: unsafe characters become '_', no leading dot."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".")[:200]
    return name if name.strip("._-") else "model"


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "artifacts"
    name: str = ""  # run directory name; default: the model name or file stem

    def __post_init__(self):
        _check(self.dir.strip() != "", "output.dir is empty", repr(self.dir),
               "Pass a directory, e.g. --output artifacts")
        _check("\0" not in self.dir, "output.dir contains a NUL character", repr(self.dir),
               "Remove it from the path")
        if self.name:
            check_run_name(self.name)


@dataclass(frozen=True)
class Config:
    seed: int = 0
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="digits_cnn"))
    data: DataConfig = field(default_factory=DataConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self):
        _check(not self.annotate.int8_weights or Variant.QAT_W4A8 in self.convert.variants,
               "annotate.int8_weights needs qat_w4a8 in convert.variants",
               list(self.annotate.int8_weights),
               "It lists the layers that keep 8-bit weights in a 4-bit-weight QAT model: add "
               "qat_w4a8 (instead of qat_int8) or empty the list")

    @property
    def run_name(self) -> str:
        if self.output.name:
            return self.output.name
        if self.model.name:
            return safe_run_name(self.model.name)
        return safe_run_name(Path(self.model.path.rstrip("/\\")).stem)

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir) / self.run_name

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["convert"]["variants"] = [v.value for v in self.convert.variants]
        d["annotate"] = {k: list(v) if isinstance(v, tuple) else v
                         for k, v in d["annotate"].items()}
        return d

    def to_toml(self) -> str:
        return recipe_io.dumps(self.to_dict())

    def hash(self) -> str:
        """sha256 of what decides the results: every key but where they are written
        (``output``) and how chatty training is (``qat.verbose``), so the same recipe gives the
        same hash whatever --output, --name, --quiet say."""
        d = self.to_dict()
        d.pop("output", None)
        d["qat"] = {k: v for k, v in d["qat"].items() if k != "verbose"}
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


SECTIONS = {f.name: f for f in fields(Config)}


def from_dict(raw: dict, where: str = "config") -> Config:
    """Build a Config from nested dicts (TOML), rejecting unknown keys."""
    top: dict = {}
    for key, value in raw.items():
        if key not in SECTIONS:
            raise recipe_io.unknown_key(key, SECTIONS, where)
        if key == "seed":
            top["seed"] = recipe_io.coerce(value, "int", "seed")
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"Config section [{key}] must be a table", repr(value),
                              f"Write it as [{key}] with keys below it")
        cls = typing.get_type_hints(Config)[key]
        hints = {g.name: g.type for g in fields(cls)}
        kwargs = {}
        for k, v in value.items():
            if k not in hints:
                raise recipe_io.unknown_key(f"{key}.{k}", [f"{key}.{h}" for h in hints], where)
            kwargs[k] = recipe_io.coerce(v, str(hints[k]), f"{key}.{k}")
        top[key] = kwargs
    base = Config()
    sections = {}
    for name, kwargs in top.items():
        if name == "seed":
            continue
        if name == "model" and ("name" in kwargs or "path" in kwargs):
            # Setting one of name/path replaces the default zoo model entirely.
            kwargs = {"name": "", "path": "", **kwargs}
        sections[name] = dataclasses.replace(getattr(base, name), **kwargs) if kwargs else \
            getattr(base, name)
    return dataclasses.replace(base, seed=top.get("seed", base.seed), **sections)


def load(recipe: str | os.PathLike | None = None,
         overrides: dict[str, object] | None = None) -> Config:
    """Load a recipe (a TOML path, or a zoo model name), then apply dotted-key overrides."""
    raw, where = recipe_io.read(recipe) if recipe else ({}, "defaults")
    for dotted, value in (overrides or {}).items():
        _override(raw, dotted, value)
    return from_dict(raw, where)


def _override(raw: dict, dotted: str, value: object) -> None:
    """Set ``section.key`` (or a top-level key) in the raw tables; setting one of a model's or
    a dataset's name/path drops the other."""
    parts = dotted.split(".")
    if len(parts) == 1:
        raw[parts[0]] = value
        return
    if len(parts) != 2:
        raise ConfigError("Config override keys look like section.key", dotted,
                          "Use e.g. --set qat.epochs=3")
    section, key = parts
    if section not in SECTIONS or section == "seed":
        raise recipe_io.unknown_key(section, [s for s in SECTIONS if s != "seed"], "--set")
    raw.setdefault(section, {})
    if not isinstance(raw[section], dict):
        raise ConfigError(f"Config section [{section}] must be a table", f"{section} = "
                          f"{raw[section]!r}", f"Write it as [{section}] with keys below it")
    if section in ("model", "data") and key in ("name", "path"):
        raw[section].pop("name", None)
        raw[section].pop("path", None)
    raw[section][key] = value
