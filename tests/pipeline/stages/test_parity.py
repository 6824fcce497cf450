"""Layer-by-layer parity on the digits model: clean model passes, a sabotaged layer is named.

Tolerances, in LSB of each tensor's own scale:
- drift (both models end to end): mean <= 1 LSB (the verifier's default threshold);
- local (the layer re-run in Keras on the .tflite's own inputs): the int8 op and Keras's fake
  quant round the same real value (on-grid inputs, on-grid weights, exact int32 sums vs float32
  sums, a bias quantized at in_scale x w_scale and a 31-bit multiplier) onto the same grid, so
  they differ only where that value sits at a rounding boundary, by one step: max <= 1 LSB
  (plus float32 noise, 1e-3), mean <= 0.5 LSB."""

import json

import numpy as np
import pytest

from pipeline.stages import modelio, parity
from pipeline.cli.app import main, parse_args
from tests import tflite_craft as craft

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_assets(demo_run, env):
    code, run_dir = demo_run
    assert code == 0
    qat = modelio.load_model(path=str(run_dir / "keras" / "qat_model.h5")).model
    return run_dir, qat, (run_dir / "qat_int8.tflite").read_bytes()


def test_every_quantized_layer_within_one_lsb(run_assets, digits):
    run_dir, qat, content = run_assets
    p = parity.compare_layers(qat, content, digits["x_test"])
    wrapped = {l.layer.name for l in qat.layers if type(l).__name__.startswith("QuantizeWrapper")}
    listed = {r.layer for r in p.rows}
    assert wrapped <= listed  # every quantized layer is listed ...
    for r in p.rows:  # ... either compared, or fused into a compared layer, or an identity
        assert r.status in ("compared", "fused", "no_tensor")
        if r.status == "fused":
            assert r.fused_into in {c.layer for c in p.compared}
    assert {r.layer for r in p.rows if r.status == "no_tensor"} == {"dropout"}
    assert len(p.compared) == 9 and not p.unmatched_tensors
    for r in p.compared:
        assert r.mean_error_lsb <= 1.0, r
        assert r.local_mean_error_lsb <= 0.5 and r.local_max_error_lsb <= 1 + 1e-3, r
    assert p.first_divergent is None
    # and the report of the run carries the same table
    report = json.loads((run_dir / "report.json").read_text())
    assert report["layer_parity"]["first_divergent"] is None
    assert "Layer parity" in (run_dir / "report.md").read_text()


def test_perturbed_weights_in_one_layer_are_found(run_assets, digits):
    """Overwrite the int8 weights of block2_pw_conv inside the flatbuffer: the first divergent
    layer must be the op that conv is fused into, and the layers before it stay clean."""
    _, qat, content = run_assets
    rng = np.random.default_rng(0)

    def sabotage(m):
        _, t = craft.tensor_named(m, "quant_block2_pw_conv/Conv2D", constant=True)
        data = np.array(m.buffers[t.buffer].data)
        m.buffers[t.buffer].data = rng.integers(0, 256, len(data)).astype(np.uint8)

    broken = craft.edit(content, sabotage)
    p = parity.compare_layers(qat, broken, digits["x_test"][:200])
    assert p.first_divergent == "block2_pw_relu"
    fused = {r.layer for r in p.rows if r.fused_into == "block2_pw_relu"}
    assert "block2_pw_conv" in fused
    rows = {r.layer: r for r in p.compared}
    assert rows["block1_relu"].mean_error_lsb <= 1 and rows["block2_relu"].mean_error_lsb <= 1
    assert rows["block2_pw_relu"].mean_error_lsb > 5
    assert rows["block2_pw_relu"].local_mean_error_lsb > 5
    # downstream of the broken conv the drift is large, but each later op is itself faithful:
    # local parity does not blame them
    after = [r for r in p.compared if list(rows).index(r.layer) > list(rows).index(
        "block2_pw_relu")]
    assert after and any(r.mean_error_lsb > 1 for r in after)
    assert all(r.local_mean_error_lsb <= 0.5 and r.local_max_error_lsb <= 1 + 1e-3
               for r in after), after


def test_cli_layers_exit_codes(run_assets, tmp_path, capsys):
    run_dir, _, content = run_assets
    code = main(parse_args(["verify", str(run_dir / "qat_int8.tflite"), "--data", "digits",
                            "--layers", "--json"]))
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["layers"]["first_divergent"] is None

    def sabotage(m):
        _, t = craft.tensor_named(m, "quant_block3_pw_conv/Conv2D", constant=True)
        m.buffers[t.buffer].data = -np.array(m.buffers[t.buffer].data)

    bad = tmp_path / "qat_int8.tflite"
    bad.write_bytes(craft.edit(content, sabotage))
    code = main(parse_args(["verify", str(bad), "--data", "digits", "--layers", "--keras",
                            str(run_dir / "keras" / "qat_model.h5")]))
    out = capsys.readouterr().out
    assert code == 1
    assert "First divergent layer: **block3_pw_relu**" in out
    assert "gate failed: layer block3_pw_relu diverges" in out


def test_a_two_input_model_is_compared_with_inputs_fed_by_name(env):
    """Token ids + position ids (Embedding layers, which tfmot does not wrap: the local re-run
    walks back through them to the raw ids), QAT-annotated, converted full-int8, compared
    with a dict of inputs. Same local tolerance as the digits model."""
    from pipeline.core import keras_env
    from pipeline.stages import annotate, convert
    from pipeline.core.records import Variant

    keras = env.keras
    keras_env.set_seed(0)
    rng = np.random.default_rng(0)
    V, T = 11, 8
    pos = keras.Input((T,), dtype="int32", name="positions")
    tok = keras.Input((T,), dtype="int32", name="tokens")
    h = keras.layers.Add(name="sum")([keras.layers.Embedding(V, 16, name="tok_emb")(tok),
                                      keras.layers.Embedding(T, 16, name="pos_emb")(pos)])
    h = keras.layers.Dense(16, activation="relu", name="hidden")(h)
    model = keras.Model([pos, tok], keras.layers.Dense(V, name="logits")(h))
    qat, _ = annotate.apply(model)
    x = {"tokens": rng.integers(0, V, (96, T)).astype(np.int32),
         "positions": np.tile(np.arange(T, dtype=np.int32), (96, 1))}
    content = convert.to_tflite(qat, Variant.QAT_INT8, {k: v[:32] for k, v in x.items()})
    p = parity.compare_layers(qat, content, x)
    rows = {r.layer: r for r in p.compared}
    assert p.samples == 96 and {"hidden", "logits"} <= set(rows)
    for r in p.compared:
        assert r.local_mean_error_lsb <= 0.5 and r.local_max_error_lsb <= 1 + 1e-3, r
    assert p.first_divergent is None
