"""LayerStatus / LayerPlan: JSON carries the plain status strings, and a plan read back from
report.json (what report.py does) gives the same coverage numbers and Markdown."""

import json

import pytest

from pipeline.keras.coverage import Coverage
from pipeline.keras.plan import LayerPlan, LayerStatus

PLANS = [
    LayerPlan("image", "InputLayer", LayerStatus.INPUT, 0),
    LayerPlan("conv", "Conv2D", LayerStatus.QUANTIZED, 80, "tfmot default 8-bit scheme"),
    LayerPlan("bn", "BatchNormalization", LayerStatus.FOLDED, 32, inbound=("conv",)),
    LayerPlan("scale", "Rescaling", LayerStatus.CALIBRATED, 0, "affine"),
    LayerPlan("norm", "LayerNormalization", LayerStatus.FALLBACK, 16, "output quantized",
              quantize_output=True, inbound=("bn",)),
    LayerPlan("pool", "MaxPooling2D", LayerStatus.PASSTHROUGH, 0),
    LayerPlan("head", "Dense", LayerStatus.KEEP_FLOAT, 100, "kept float"),
]


def test_statuses_are_their_strings_in_json_and_text():
    assert LayerStatus("keep_float") is LayerStatus.KEEP_FLOAT
    assert LayerStatus.FALLBACK == "fallback" and f"{LayerStatus.FALLBACK}" == "fallback"
    assert json.dumps({LayerStatus.FOLDED: LayerStatus.FOLDED}) == '{"folded": "folded"}'
    with pytest.raises(ValueError):
        LayerStatus("quantised")


def test_what_each_status_means_for_qat():
    trained = {s for s in LayerStatus if s.trains_quantized}
    assert trained == {LayerStatus.QUANTIZED, LayerStatus.FOLDED, LayerStatus.FALLBACK}
    assert {s for s in LayerStatus if s.annotated} == trained | {LayerStatus.PASSTHROUGH}
    assert {s for s in LayerStatus if s.special} == {
        LayerStatus.FALLBACK, LayerStatus.CALIBRATED, LayerStatus.EXCLUDED,
        LayerStatus.KEEP_FLOAT}
    assert all(s.meaning for s in LayerStatus if s is not LayerStatus.INPUT)


def test_a_plan_read_back_from_json_gives_the_same_coverage():
    cov = Coverage("m", PLANS, ["a note"])
    doc = json.loads(json.dumps(cov.to_dict()))
    assert doc["by_status"] == {"quantized": 1, "folded": 1, "calibrated": 1, "fallback": 1,
                                "passthrough": 1, "keep_float": 1}
    assert doc["layers"] == 6 and doc["layers_quantized"] == 3
    assert doc["params"] == 228 and doc["params_quantized"] == 128
    assert doc["fallbacks"] == {"Rescaling (calibrated)": 1, "LayerNormalization (fallback)": 1}
    back = [LayerPlan(**{**l, "weight_attrs": tuple(l["weight_attrs"]),
                         "inbound": tuple(l["inbound"])}) for l in doc["per_layer"]]
    assert back == PLANS and all(type(p.status) is LayerStatus for p in back)
    again = Coverage(doc["model"], back, doc["notes"])
    assert again.to_dict() == cov.to_dict() and again.markdown() == cov.markdown()
    md = cov.markdown()
    assert "| keep_float | 1 | kept float by policy (mixed model) |" in md
    assert "| head | Dense | keep_float | kept float |" in md
    assert "| pool |" not in md  # a pass-through is not listed layer by layer
