"""What each stage of a run hands to the next (pipeline/stages/run.py), in data-path order:

    Inputs -> FloatStage -> Annotated -> QatStage -> Conversions -> Verified
           -> (LayerParity, reference bundle, gates) -> report

Frozen dataclasses holding the live objects (models, scores, records), never their JSON
form: report.build turns them into report.json and report.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.core.records import Agreement, Variant, VariantResult
from pipeline.keras.coverage import Coverage
from pipeline.stages.convert import Converted
from pipeline.stages.data import Dataset
from pipeline.stages.finetune import FitResult
from pipeline.stages.modelio import LoadedModel
from pipeline.stages.verify import CLASSIFICATION, Scored, Task


@dataclass(frozen=True)
class Splits:
    """The train split cut into training and validation parts (data.train_val_split)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


@dataclass(frozen=True)
class Inputs:
    """load: the model and data, checked against each other, and the QAT plan made before
    any training (a policy typo fails here)."""

    env: object            # keras_env.KerasEnv
    loaded: LoadedModel
    dataset: Dataset
    splits: Splits
    from_logits: bool      # the model's outputs are logits, not probabilities
    plan: Coverage
    task: Task = CLASSIFICATION  # how its outputs are scored (data.task, resolved)


@dataclass(frozen=True)
class FloatStage:
    """train_float (zoo models) and the float baseline's test score."""

    model: object              # the float tf_keras model
    training: dict | None      # {"epochs", "best_val_accuracy"} when this run trained it
    score: Scored              # Keras float on the test split

    @property
    def accuracy(self) -> float:
        return self.score.accuracy


@dataclass(frozen=True)
class Annotated:
    """annotate: the quantize_apply'd model and what QAT covers."""

    model: object
    coverage: Coverage


@dataclass(frozen=True)
class QatStage:
    """range_init + finetune: the trained QAT model."""

    model: object
    coverage: Coverage
    fit: FitResult
    range_init: dict | None    # ranges.init_ranges' summary, None when off

    def to_dict(self) -> dict:
        return {**self.fit.to_dict(), "range_init": self.range_init}


@dataclass(frozen=True)
class Conversions:
    """convert: every configured variant, in config order, float islands applied."""

    by_variant: dict[Variant, Converted]
    calibration_samples: int = 0   # representative samples each PTQ variant was calibrated on
    # peers convert.peers added that their tool failed to make: variant -> the error
    failed_peers: dict = field(default_factory=dict)
    float_graph: str = "the float model"  # what float32 / PTQ were converted from

    @property
    def islands(self) -> dict:
        """variant name -> islands.IslandReport, for the variants with float islands."""
        return {v.value: c.islands for v, c in self.by_variant.items() if c.islands is not None}

    @property
    def islands_only(self) -> dict[Variant, bool]:
        """For variants with float islands: not full-int8 only because of those islands."""
        return {v: c.islands_only for v, c in self.by_variant.items() if c.islands is not None}

    @property
    def deliverable(self) -> Variant:
        """The variant an app ships: the QAT one (qat_int8, qat_w4a8) when converted, else
        the first."""
        return Variant.qat_of(self.by_variant) or next(iter(self.by_variant))


@dataclass(frozen=True)
class Verified:
    """verify: Keras QAT and every .tflite scored on the test split, and compared."""

    keras_qat: Scored
    scored: dict[Variant, Scored]
    variants: dict[Variant, VariantResult]
    agreement: dict[Variant, Agreement]   # each .tflite vs its Keras source
    comparisons: list[Agreement]          # Keras float vs QAT, and vs qat_int8.tflite
    # sequence models: each .tflite vs its Keras source per token (verify.per_token)
    per_token: list[dict] = field(default_factory=list)
    # multi-output models: the outputs that are not scored, by output error (LSB)
    other_outputs: list[Agreement] = field(default_factory=list)
