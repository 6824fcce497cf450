"""The keyword-spotting zoo entry: eSpeak NG synthesis, the MFCC front end, the kws dataset
(small slices, generated in child processes) and the DS-CNN."""

import json
import math
import sys

import numpy as np
import pytest

from models import DATASETS, MODELS, get_model, kws, kws_features as F, kws_tts
from pipeline.core.errors import DataError

TRAIN, TEST = 36, 24  # three / two clips per class


@pytest.fixture(scope="session")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("kws-cache")
    return root, kws.load_dataset(cache_dir=root, train=TRAIN, test=TEST)


# ---- eSpeak NG ------------------------------------------------------------------------------

def test_tts_speaks_a_keyword():
    engine = kws_tts.Engine()
    assert engine.rate == 22050 and engine.version.split(".")[0] == "1"
    x = engine.synth(kws_tts.Utterance("yes", "en-us+m3", 175, 50, 50, seed=1))
    assert 0.2 * F.SAMPLE_RATE < len(x) < 1.0 * F.SAMPLE_RATE  # a short word, at 16 kHz
    assert np.sqrt(np.mean(x ** 2)) > 0.02 and np.abs(x).max() <= 1.0
    # trimmed to the word: both ends are at least 1 % of the peak
    assert min(abs(x[0]), abs(x[-1])) >= 0.01 * np.abs(x).max()
    with pytest.raises(DataError, match="refused the voice"):
        engine.synth(kws_tts.Utterance("yes", "xx-nowhere", 175, 50, 50, seed=1))


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import raises ImportError
    with pytest.raises(DataError, match=r"qat-deploy\[zoo\]") as e:
        kws_tts.variants()
    assert "\n" not in str(e.value)


def test_a_failing_child_is_a_one_line_error():
    task = {"split": "no-such-split", "start": 0, "stop": 1, "voices": ["m1"],
            "params": kws.PARAMS}
    with pytest.raises(DataError, match="failed in its child process.*exit 1.*ValueError"):
        kws._run_child(task)


def test_voice_families_are_split_whole():
    split = kws.voice_split(kws_tts.variants())
    train = {kws.family(v) for v in split["train"]}
    test = {kws.family(v) for v in split["test"]}
    assert train and test and not train & test
    n = len(split["train"]) + len(split["test"])
    assert 0.2 <= len(split["test"]) / n < 0.3


# ---- features -------------------------------------------------------------------------------

def test_resampler_reproduces_a_tone():
    t_in = np.arange(22050) / 22050
    y = F.resample(np.sin(2 * np.pi * 440 * t_in) + 0.5 * np.sin(2 * np.pi * 3000 * t_in),
                   22050, 16000)
    assert len(y) == 16000
    t = np.arange(16000) / 16000
    want = np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 3000 * t)
    assert np.abs(y - want)[100:-100].max() < 2e-4  # away from the zero-padded ends


def _mfcc_by_definition(audio, frames):
    """MFCC rows of one clip written out from the definitions (direct DFT sums, the mel
    triangles and the DCT as loops): independent of kws_features' vectorised code."""
    n = np.arange(F.WINDOW)
    k = np.arange(F.FFT_SIZE // 2 + 1)[:, None]
    basis = np.exp(-2j * np.pi * k * n / F.FFT_SIZE)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / F.WINDOW)
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)
    lo, hi = mel(F.MEL_LOW_HZ), mel(F.MEL_HIGH_HZ)
    edges = [lo + (hi - lo) * i / (F.MEL_BINS + 1) for i in range(F.MEL_BINS + 2)]
    out = np.zeros((len(frames), F.NUM_MFCC))
    for row, t in enumerate(frames):
        spec = np.abs(basis @ (audio[t * F.STRIDE:t * F.STRIDE + F.WINDOW] * window))
        bands = np.zeros(F.MEL_BINS)
        for b in range(1, len(spec)):  # bin 0 (DC) is left out
            m = mel(b * F.SAMPLE_RATE / F.FFT_SIZE)
            for j in range(F.MEL_BINS):
                left, centre, right = edges[j], edges[j + 1], edges[j + 2]
                w = min((m - left) / (centre - left), (right - m) / (right - centre))
                bands[j] += spec[b] * max(0.0, w)
        logs = np.log(bands + 1e-6)
        for c in range(F.NUM_MFCC):
            out[row, c] = math.sqrt(2 / F.MEL_BINS) * sum(
                logs[j] * math.cos(math.pi * c * (2 * j + 1) / (2 * F.MEL_BINS))
                for j in range(F.MEL_BINS))
    return out


def _tone(freq=1000.0):
    rng = np.random.default_rng(0)
    t = np.arange(F.CLIP_SAMPLES) / F.SAMPLE_RATE
    return 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))


def test_mfcc_matches_the_definitions():
    audio = _tone()
    got = F.mfcc(audio)
    assert got.shape == (49, 10) and got.dtype == np.float32
    frames = [0, 17, 48]  # the first, one in the middle, the last
    want = _mfcc_by_definition(audio, frames)
    # float64 both ways; the float32 result rounds at 6e-8 relative
    np.testing.assert_allclose(got[frames], want, rtol=1e-5, atol=1e-5)


def test_a_tone_peaks_in_its_mel_band_and_the_dct_is_orthogonal():
    spectrum = np.abs(np.fft.rfft(F.frames(_tone(1000.0))[10] * F.hann_window(), F.FFT_SIZE))
    bands = spectrum @ F.mel_matrix()
    centres = F.hertz_to_mel(F.MEL_LOW_HZ) + (F.hertz_to_mel(F.MEL_HIGH_HZ) -
                                              F.hertz_to_mel(F.MEL_LOW_HZ)) * \
        np.arange(1, F.MEL_BINS + 1) / (F.MEL_BINS + 1)
    assert int(np.argmax(bands)) == int(np.argmin(np.abs(centres - F.hertz_to_mel(1000.0))))
    d = F.dct_matrix(40, 40)
    # columns are orthogonal with norm 1, except column 0 (tf.signal's scaling): norm sqrt(2)
    np.testing.assert_allclose(d.T @ d, np.diag([2.0] + [1.0] * 39), atol=1e-12)


def test_mfcc_matches_tensorflow_signal(env):
    """The MLPerf Tiny reference computes its MFCCs with tf.signal: same numbers here."""
    tf = env.tf
    audio = np.stack([_tone(), 0.1 * np.random.default_rng(1).standard_normal(16000)])
    spec = tf.abs(tf.signal.stft(audio.astype(np.float32), 480, 320,
                                 window_fn=tf.signal.hann_window))
    mel = tf.signal.linear_to_mel_weight_matrix(40, 257, 16000, F.MEL_LOW_HZ, F.MEL_HIGH_HZ)
    want = tf.signal.mfccs_from_log_mel_spectrograms(
        tf.math.log(tf.tensordot(spec, mel, 1) + 1e-6))[..., :10].numpy()
    np.testing.assert_allclose(F.mel_matrix(), mel.numpy(), atol=2e-5)  # tf: float32
    np.testing.assert_allclose(F.mfcc(audio), want, atol=1e-4)  # |values| up to ~15


# ---- dataset --------------------------------------------------------------------------------

def test_dataset_shapes_classes_and_balance(small):
    _, d = small
    assert d["x_train"].shape == (TRAIN, 49, 10, 1) and d["x_test"].shape == (TEST, 49, 10, 1)
    assert d["x_train"].dtype == np.float32 and np.isfinite(d["x_train"]).all()
    assert np.bincount(d["y_train"]).tolist() == [TRAIN // 12] * 12
    assert np.bincount(d["y_test"]).tolist() == [TEST // 12] * 12
    # normalised with the train split's own statistics, per coefficient
    flat = d["x_train"].reshape(-1, 10)
    np.testing.assert_allclose(flat.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(flat.std(0), 1, atol=1e-4)


def test_card_and_preprocessing(small):
    _, d = small
    card, pre = d["card"], d["preprocessing"]
    assert card["classes"] == list(kws.CLASSES) == pre["labels"]
    assert card["sizes"] == {"x_train": TRAIN, "x_test": TEST}
    assert "GPL-3.0" in card["licence"] and "eSpeak NG 1." in card["source"]
    assert not set(card["voices"]["train_variants"]) & set(card["voices"]["test_variants"])
    assert pre["normalise"]["mean"] == card["normalisation"]["mean"]
    assert pre["features"]["frame_length"] == 480 and pre["features"]["num_mfcc"] == 10
    assert pre["input_shape"] == [49, 10, 1] and "MFCC" in pre["transform"]
    json.dumps(pre)  # the model card carries it


def test_second_load_reads_the_cache(small, monkeypatch):
    root, d = small
    monkeypatch.setattr(kws, "generate", lambda *a, **k: pytest.fail("generated again"))
    again = kws.load_dataset(cache_dir=root, train=TRAIN, test=TEST)
    for k in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(again[k], d[k])
    assert again["card"] == d["card"]


def test_generation_is_bit_identical_whatever_the_workers(small):
    """The fixture ran both splits at once (2 workers); one worker in turn gives the same
    bytes (each block in its own fresh child process)."""
    _, d = small
    one, _ = kws.generate(TRAIN, TEST, kws.PARAMS, workers=1)
    for k in one:
        assert one[k].tobytes() == d[k].tobytes(), k


# ---- model ----------------------------------------------------------------------------------

def test_registry_has_kws():
    assert MODELS["kws_dscnn"].dataset == "kws" and "kws" in DATASETS
    assert MODELS["kws_dscnn"].recipe.is_file()


def test_dscnn_builds_to_twelve_logits(env):
    model = get_model("kws_dscnn").build(env.keras)
    assert tuple(model.input_shape) == (None, 49, 10, 1)
    assert tuple(model.output_shape) == (None, 12)
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds.count("DepthwiseConv2D") == 4 and kinds.count("Conv2D") == 5
    assert {"BatchNormalization", "ReLU", "Dropout", "AveragePooling2D", "Flatten",
            "Dense"} <= set(kinds)
    assert model.layers[-1].activation.__name__ == "linear"  # logits
    assert 20_000 < model.count_params() < 30_000


@pytest.mark.slow
def test_tiny_end_to_end_run_is_full_int8(tmp_path, env):
    from pipeline.cli.app import main, parse_args

    code = main(parse_args([
        "run", "kws_dscnn", "--output", str(tmp_path), "--quiet",
        "--set", "data.train_samples=240", "--set", "data.test_samples=96",
        "--set", "model.float_epochs=1", "--set", "qat.epochs=1",
        "--set", "gates.min_float_accuracy=0", "--set", "gates.max_accuracy_drop_pp=100",
        "--set", "gates.min_agreement=0.9"]))
    report = json.loads((tmp_path / "kws_dscnn" / "report.json").read_text())
    assert code == 0, report.get("gates")
    variants = {v["variant"]: v for v in report["variants"]}
    assert variants["qat_int8"]["full_int8"]
    agreement = {a["candidate"]: a for a in report["agreement"]}
    assert agreement["qat_int8"]["top1_agreement"] >= 0.9
