"""Hostile model files: special files, forged HDF5/.keras contents, zip bombs, unbuilt models,
and a SavedModel whose Lambda is hidden by re-serialized metadata JSON."""

import json
import os
import warnings
import zipfile

import pytest

from pipeline.core import files

from pipeline.stages import modelio
from pipeline.core.errors import ModelFileError


def _h5(path, model_config):
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = model_config
        f.attrs["keras_version"] = "2.21.0"
    return str(path)


def _keras_zip(path, config, metadata=None):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", config if isinstance(config, str) else json.dumps(config))
        z.writestr("metadata.json", json.dumps(metadata if metadata is not None else
                                               {"keras_version": "2.21.0"}))
    return str(path)


def _refused(path, *fragments):
    with pytest.raises(ModelFileError) as exc:
        modelio.load_model(path=str(path))
    msg = str(exc.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    return msg


def test_character_device_is_named(env):
    msg = _refused("/dev/zero", "model file is a character device, not a regular file")
    assert "does not exist" not in msg


def test_fifo_with_a_model_suffix_does_not_block(env, tmp_path):
    os.mkfifo(tmp_path / "m.h5")
    _refused(tmp_path / "m.h5", "named pipe (FIFO), not a regular file")


@pytest.mark.parametrize("config, fragment", [
    ("{not json", "config (model_config) is not valid JSON"),
    ("[1, 2, 3]", "not a Keras model config (expected a JSON object with class_name and "
                  "config). Received: {p} (a JSON list)"),
    ('{"class_name": "Sequential"}', "(missing config)"),
    ('{"class_name": 7, "config": {}}', "class_name=7"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
])
def test_h5_model_config_that_is_not_a_keras_config(env, tmp_path, config, fragment):
    path = _h5(tmp_path / "m.h5", config)
    _refused(path, fragment.format(p=path))


def test_h5_model_config_that_is_not_text(env, tmp_path):
    _refused(_h5(tmp_path / "m.h5", 42), "config (model_config) is not JSON text", "(a int64)")


def test_h5_without_signature_is_refused_before_h5py(env, tmp_path):
    (tmp_path / "m.h5").write_bytes(b"\0" * 4096)
    _refused(tmp_path / "m.h5", "not an HDF5 file (no HDF5 signature)")


def test_h5_over_the_model_limit(env, tmp_path, monkeypatch):
    path = _h5(tmp_path / "m.h5", '{"class_name": "Sequential", "config": {}}')
    monkeypatch.setenv(files.ENV_LIMIT, "1000")
    _refused(path, "larger than the 1000 bytes limit for model files", files.ENV_LIMIT)


@pytest.mark.parametrize("config, metadata, fragment", [
    ("nope", None, "config.json is not valid JSON"),
    ({"layers": []}, None, "(missing class_name, config)"),
    ({"class_name": "Sequential", "config": {}}, [1], "metadata.json is not a JSON object"),
])
def test_keras_archive_with_bad_json(env, tmp_path, config, metadata, fragment):
    _refused(_keras_zip(tmp_path / "m.keras", config, metadata), fragment)


def test_keras_zip_bomb_is_refused_before_extracting(env, tmp_path):
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {}}))
        with z.open("model.weights.h5", "w") as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(80):  # 80 MiB of zeros: ~80 KB compressed
                f.write(chunk)
    assert path.stat().st_size < 1 << 20
    _refused(path, "expands", "zip bomb", "bomb.keras")


def test_keras_archive_expanding_past_the_limit(env, tmp_path, monkeypatch):
    path = _keras_zip(tmp_path / "m.keras", {"class_name": "Sequential", "config": {}})
    monkeypatch.setenv(files.ENV_LIMIT, "20")
    _refused(path, "limit for model files")


def test_unbuilt_model_without_inputs(env, tmp_path):
    m = env.keras.Sequential([env.keras.layers.Dense(10)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.save(tmp_path / "unbuilt.keras")
    _refused(tmp_path / "unbuilt.keras", "The model has no inputs", "keras.Input(shape=...)")


def _lambda_savedmodel(env, path, marker):
    keras = env.keras
    inp = keras.Input((4,))
    code = f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]"
    h = keras.layers.Lambda(eval(code), name="sneaky")(inp)
    m = keras.Model(inp, keras.layers.Dense(3)(h))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.save(path, save_format="tf")
    if marker.exists():
        marker.unlink()


def _reserialize_metadata(meta_path):
    """Same JSON, other text: compact separators, sorted keys, 'Lambda' as 'Lamb\\u0064a'."""
    from tf_keras.protobuf import saved_metadata_pb2

    proto = saved_metadata_pb2.SavedMetadata()
    proto.ParseFromString(meta_path.read_bytes())
    for node in proto.nodes:
        if node.metadata:
            text = json.dumps(json.loads(node.metadata), sort_keys=True, separators=(",", ":"))
            node.metadata = text.replace('"Lambda"', '"Lamb\\u0064a"')
    meta_path.write_bytes(proto.SerializeToString())


def test_savedmodel_lambda_hidden_by_reformatted_metadata_is_refused(env, tmp_path):
    marker = tmp_path / "code_ran"
    sm = tmp_path / "sm"
    _lambda_savedmodel(env, sm, marker)
    meta = sm / "keras_metadata.pb"
    _reserialize_metadata(meta)
    blob = meta.read_bytes()
    assert b'"class_name": "Lambda"' not in blob and b"Lamb\\u0064a" in blob  # grep-proof
    _refused(sm, "Lambda layer(s) sneaky", "--trust-model")
    assert not marker.exists()


def test_savedmodel_with_corrupt_metadata_or_a_fifo(env, tmp_path):
    sm = tmp_path / "sm"
    sm.mkdir()
    (sm / "saved_model.pb").write_bytes(b"\0")
    (sm / "keras_metadata.pb").write_bytes(b"\xff\xff\xff\xff garbage")
    _refused(sm, "keras_metadata.pb is not a valid Keras metadata file")
    (sm / "keras_metadata.pb").unlink()
    os.mkfifo(sm / "keras_metadata.pb")
    _refused(sm, "named pipe (FIFO), not a regular file")
