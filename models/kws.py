"""kws: spoken keywords synthesised with eSpeak NG, mixed with noise, as MFCCs (49 x 10 x 1).

Classes (12, MLPerf Tiny KWS order): the 10 Speech Commands keywords down, go, left, no, off,
on, right, stop, up, yes; ``_silence_`` (noise only) and ``_unknown_`` (one of the 25 other
words of Speech Commands v2). Sample i of a split has label i % 12: every class gets n / 12
samples (the first n % 12 classes one more).

A sample: one word spoken by an eSpeak NG voice (an English accent + a voice variant file,
e.g. "en-gb-scotland+f3") at a random rate, pitch and pitch range, resampled to 16 kHz
(models/kws_features.py), trimmed, placed at a random offset in a 1 s window at a random
level, plus noise at an SNR of 30, 20, 15 or 10 dB: white, pink (1/f power), brown (1/f^2;
both shaped from white noise, flat below 20 Hz) or babble (a crowd: 16-24 other words by
voices of the same split at random offsets, summed, drawn from 48 such words synthesised per
block of samples). SNR = speech power over the trimmed word / noise power over the 1 s clip.
Silence = the noise alone, at the level it would have beside a word. The mixture is rounded to
int16 PCM (as a microphone delivers it), then turned into MFCCs.

Honest split: the voice variants (espeak-ng-data/voices/!v, names without spaces) are split
by family (trailing digits dropped, lower case: m1..m8 are one family), and the test split
uses only held-out families (about a fifth of the variants), for its words and its babble.
Accents are shared; utterances (rate, pitch, placement, noise) are drawn anew.

Determinism: sample i of split s is drawn from numpy's PCG64 seeded with (seed, s, i), and
synthesised in blocks of PARAMS["block"] samples, each block in a fresh child process
(models/kws_tts.py says why), so the arrays depend only on the parameters and the asset
versions, not on the number of workers. Features are normalised per coefficient with the
mean and standard deviation of the train split (stored in the card and 'preprocessing').
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from models import datacache, kws_features, kws_tts
from pipeline.core.errors import DataError, QatError

NAME = "kws"
VERSION = 1
KEYWORDS = ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes")
CLASSES = KEYWORDS + ("_silence_", "_unknown_")
SILENCE, UNKNOWN = CLASSES.index("_silence_"), CLASSES.index("_unknown_")
UNKNOWN_WORDS = ("backward", "bed", "bird", "cat", "dog", "eight", "five", "follow", "forward",
                 "four", "happy", "house", "learn", "marvin", "nine", "one", "seven", "sheila",
                 "six", "three", "tree", "two", "visual", "wow", "zero")
BABBLE_WORDS = ("people", "water", "little", "number", "morning", "window", "table", "paper",
                "music", "garden", "yellow", "river", "money", "kitchen", "pencil", "station",
                "orange", "doctor", "winter", "letter", "button", "family", "market", "evening")
ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-029", "en-gb-scotland", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-us-nyc")
DEFAULT_TRAIN, DEFAULT_TEST = 12000, 3000
INPUT_SHAPE = (kws_features.FRAMES, kws_features.NUM_MFCC, 1)
NUM_CLASSES = len(CLASSES)
SPLIT_SEED = 0
TEST_VARIANT_SHARE = 0.2
PARAMS = {
    "seed": 0,
    "block": 500,
    "rate_wpm": [110, 250],        # espeakRATE, uniform integer
    "pitch": [15, 85],             # espeakPITCH (50 normal)
    "pitch_range": [10, 90],       # espeakRANGE (50 normal)
    "level_dbfs": [-35.0, -15.0],  # RMS of the word, uniform in dB
    "snr_db": [30, 20, 15, 10],    # one at random per sample
    "noises": ["white", "pink", "brown", "babble"],
    "babble_words": [16, 24],      # talkers, uniform integer
    "babble_pool": 48,             # babble words synthesised per block of samples
    "test_variant_share": TEST_VARIANT_SHARE,
}
SPLITS = ("train", "test")
BLOCK_TIMEOUT_S = 600  # one block of 500 samples takes about 5 s on one core


def family(variant: str) -> str:
    return re.sub(r"\d+$", "", variant).lower()


def voice_split(variants: list[str]) -> dict[str, list[str]]:
    """Variants by split: whole families (sorted, shuffled with SPLIT_SEED) go to the test
    split until it holds TEST_VARIANT_SHARE of the variants; the rest are train."""
    fams = sorted({family(v) for v in variants})
    order = np.random.default_rng(SPLIT_SEED).permutation(len(fams))
    test_fams, count = set(), 0
    for i in order:
        if count >= TEST_VARIANT_SHARE * len(variants):
            break
        test_fams.add(fams[i])
        count += sum(family(v) == fams[i] for v in variants)
    return {"train": [v for v in variants if family(v) not in test_fams],
            "test": [v for v in variants if family(v) in test_fams]}


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(x * x))
    return x / rms if rms > 0 else x


def _coloured(rng, alpha: float) -> np.ndarray:
    """Noise with power spectral density ~ 1/f^alpha (flat below 20 Hz), unit RMS."""
    n = kws_features.CLIP_SAMPLES
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / kws_features.SAMPLE_RATE)
    spec *= np.maximum(f, 20.0) ** (-alpha / 2.0)
    spec[0] = 0.0
    return _unit_rms(np.fft.irfft(spec, n))


def _utterance(rng, text: str, voices: list[str], p: dict) -> kws_tts.Utterance:
    accent = ACCENTS[rng.integers(len(ACCENTS))]
    variant = voices[rng.integers(len(voices))]
    return kws_tts.Utterance(
        text, f"{accent}+{variant}", int(rng.integers(p["rate_wpm"][0], p["rate_wpm"][1] + 1)),
        int(rng.integers(p["pitch"][0], p["pitch"][1] + 1)),
        int(rng.integers(p["pitch_range"][0], p["pitch_range"][1] + 1)),
        int(rng.integers(1, 2**31 - 1)))


def _place(word: np.ndarray, start: int) -> np.ndarray:
    """The word in a 1 s window starting at ``start`` (may be negative or run past the end)."""
    n = kws_features.CLIP_SAMPLES
    out = np.zeros(n)
    lo, hi = max(0, start), min(n, start + len(word))
    if hi > lo:
        out[lo:hi] = word[lo - start:hi - start]
    return out


def babble_pool(engine, rng, voices: list[str], p: dict) -> list[np.ndarray]:
    """Words for babble noise (unit RMS), synthesised once per block of samples."""
    return [_unit_rms(engine.synth(_utterance(rng, BABBLE_WORDS[rng.integers(len(BABBLE_WORDS))],
                                              voices, p))) for _ in range(p["babble_pool"])]


def _babble(rng, pool: list[np.ndarray], p: dict) -> np.ndarray:
    n = kws_features.CLIP_SAMPLES
    total = np.zeros(n)
    for _ in range(int(rng.integers(p["babble_words"][0], p["babble_words"][1] + 1))):
        word = pool[rng.integers(len(pool))]
        total += _place(word, int(rng.integers(-len(word) // 2, n - len(word) // 2)))
    return _unit_rms(total)


def _noise(kind: str, rng, pool, p) -> np.ndarray:
    if kind == "white":
        return _unit_rms(rng.standard_normal(kws_features.CLIP_SAMPLES))
    if kind in ("pink", "brown"):
        return _coloured(rng, 1.0 if kind == "pink" else 2.0)
    return _babble(rng, pool, p)


def clip(engine, rng, label: int, voices: list[str], pool, p: dict) -> np.ndarray:
    """One 1 s clip (float64, int16-quantised) of class ``label``."""
    n = kws_features.CLIP_SAMPLES
    text = (UNKNOWN_WORDS[rng.integers(len(UNKNOWN_WORDS))] if label == UNKNOWN
            else CLASSES[label])
    utt = _utterance(rng, text, voices, p)
    level = 10.0 ** (rng.uniform(*p["level_dbfs"]) / 20.0)
    snr = float(p["snr_db"][rng.integers(len(p["snr_db"]))])
    kind = p["noises"][rng.integers(len(p["noises"]))]
    x = np.zeros(n)
    if label != SILENCE:
        word = engine.synth(utt)
        if len(word) > n:  # a slow long word: its middle second
            word = word[(len(word) - n) // 2:][:n]
        x = _place(level * _unit_rms(word), int(rng.integers(0, n - len(word) + 1)))
    x += _noise(kind, rng, pool, p) * (level / 10.0 ** (snr / 20.0))
    return np.clip(np.round(x * 32768.0), -32768, 32767) / 32768.0


def block(task: dict) -> tuple[np.ndarray, str]:
    """Raw MFCCs (k, 49, 10) of samples start..stop-1 of one split, and the eSpeak NG version.
    Runs in a fresh child process (one Engine per process: see models/kws_tts.py)."""
    p, split, start, stop = task["params"], task["split"], task["start"], task["stop"]
    engine = kws_tts.Engine()
    s = SPLITS.index(split)
    # the pool depends on the block's start only: a shorter last block draws the same words
    pool = babble_pool(engine, np.random.default_rng([p["seed"], s, 2**40 + start]),
                       task["voices"], p)
    audio = np.stack([clip(engine, np.random.default_rng([p["seed"], s, i]), i % NUM_CLASSES,
                           task["voices"], pool, p) for i in range(start, stop)])
    return kws_features.mfcc(audio), engine.version


def child_main() -> None:
    """The child process: a task (JSON) on stdin -> the version line + an .npy on stdout."""
    task = json.loads(sys.stdin.buffer.read())
    try:
        feats, version = block(task)
    except QatError as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(2)
    out = io.BytesIO()
    np.save(out, feats, allow_pickle=False)
    sys.stdout.buffer.write(version.encode() + b"\n" + out.getvalue())


def _run_child(task: dict) -> tuple[np.ndarray, str]:
    """``block(task)`` in a fresh Python process: a crash in libespeak-ng (or a hang, past
    BLOCK_TIMEOUT_S) is a one-line DataError here, not the death of the caller."""
    code = (f"import sys; sys.path[:0] = {json.dumps(sys.path)}; "
            "from models.kws import child_main; child_main()")
    try:
        done = subprocess.run([sys.executable, "-c", code], input=json.dumps(task).encode(),
                              capture_output=True, timeout=BLOCK_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DataError("eSpeak NG synthesis of a kws block timed out",
                        f"{task['split']} samples {task['start']}..{task['stop'] - 1}, "
                        f"{BLOCK_TIMEOUT_S} s", "Retry; if it persists, reinstall "
                        f"espeakng-loader ({kws_tts.EXTRA_FIX})") from exc
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        how = (f"killed by signal {-done.returncode}" if done.returncode < 0
               else f"exit {done.returncode}")
        raise DataError("Synthesising the kws dataset failed in its child process",
                        f"{how}: {err[-1][:300] if err else 'no message'}",
                        f"Check the eSpeak NG install ({kws_tts.EXTRA_FIX})")
    version, _, npy = done.stdout.partition(b"\n")
    return np.load(io.BytesIO(npy), allow_pickle=False), version.decode()


def _run_blocks(tasks: list[dict], workers: int) -> tuple[list[np.ndarray], str]:
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(_run_child, tasks))
    return [r[0] for r in results], (results[0][1] if results else "")


def generate(n_train: int, n_test: int, p: dict, workers: int = 0) -> tuple[dict, dict]:
    """(arrays, card) for the two splits, synthesised in child processes."""
    t0 = time.perf_counter()
    voices = voice_split(kws_tts.variants())
    sizes = {"train": n_train, "test": n_test}
    tasks = [{"split": split, "start": a, "stop": min(a + p["block"], sizes[split]),
              "voices": voices[split], "params": p}
             for split in SPLITS for a in range(0, sizes[split], p["block"])]
    feats, version = _run_blocks(tasks, workers or kws_tts.cpu_workers())
    raw = {split: np.concatenate([f for f, t in zip(feats, tasks) if t["split"] == split])
           for split in SPLITS}
    mean = raw["train"].reshape(-1, kws_features.NUM_MFCC).mean(axis=0).astype(np.float32)
    std = raw["train"].reshape(-1, kws_features.NUM_MFCC).std(axis=0).astype(np.float32)
    arrays = {}
    for split in SPLITS:
        arrays[f"x_{split}"] = ((raw[split] - mean) / std).astype(np.float32)[..., None]
        arrays[f"y_{split}"] = (np.arange(sizes[split]) % NUM_CLASSES).astype(np.int64)
    card = _card(version, voices, p, mean, std, time.perf_counter() - t0)
    return arrays, card


def _card(version: str, voices: dict, p: dict, mean, std, seconds: float) -> dict:
    return {
        "source": (f"Synthesised speech: eSpeak NG {version} (libespeak-ng and espeak-ng-data "
                   "as bundled by the espeakng-loader package), driven through its C API "
                   "(models/kws_tts.py); no recorded speech"),
        "classes": list(CLASSES),
        "words": {"keywords": list(KEYWORDS), "unknown": list(UNKNOWN_WORDS),
                  "babble": list(BABBLE_WORDS)},
        "voices": {"accents": list(ACCENTS), "train_variants": voices["train"],
                   "test_variants": voices["test"]},
        "splits": ("test voices held out: the test split's words and babble come only from "
                   "voice-variant families absent from train (accents shared); sample i has "
                   "label i % 12 (balanced)"),
        "noise": ("white; pink (1/f) and brown (1/f^2), shaped from white noise, flat below "
                  f"20 Hz; babble: {p['babble_words'][0]}-{p['babble_words'][1]} words of the "
                  "babble list by voices of the same split, summed; SNR = word power / noise "
                  "power over the clip, one of snr_db per sample; silence = noise alone"),
        "augmentation": {k: p[k] for k in ("rate_wpm", "pitch", "pitch_range", "level_dbfs",
                                           "snr_db", "noises", "babble_words")},
        "normalisation": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "licence": ("eSpeak NG (program and espeak-ng-data) is GPL-3.0-or-later; this data "
                    "set is audio it synthesised (as MFCC features), no third-party "
                    "recordings"),
        "generation_seconds": round(seconds, 1),
    }


def preprocessing(card: dict) -> dict:
    norm = card["normalisation"]
    f = kws_features
    return {
        "source": card["source"],
        "transform": (f"1 s of {f.SAMPLE_RATE} Hz mono int16 audio / 32768 -> MFCC ({f.WINDOW}-"
                      f"sample periodic Hann frames every {f.STRIDE}, |rfft| of {f.FFT_SIZE}, "
                      f"{f.MEL_BINS} HTK mel bands {f.MEL_LOW_HZ:g}-{f.MEL_HIGH_HZ:g} Hz, "
                      f"ln(mel + {f.LOG_OFFSET:g}), DCT-II, {f.NUM_MFCC} coefficients; "
                      "preprocessing.features) -> (mfcc - mean[k]) / std[k] per coefficient "
                      "(preprocessing.normalise) -> float32 (49, 10, 1)"),
        "features": dict(kws_features.PARAMETERS),
        "normalise": {"how": "x = (mfcc - mean[k]) / std[k] per coefficient k (float32), "
                             "mean/std of the train split",
                      "mean": norm["mean"], "std": norm["std"]},
        "input_shape": list(INPUT_SHAPE),
        "labels": list(CLASSES),  # label k is CLASSES[k]
        "split": card["splits"],
    }


def load_dataset(*, cache_dir=None, train: int = 0, test: int = 0) -> dict:
    """The kws splits (generated once, then read from the cache under ``cache_dir``);
    ``train``/``test`` > 0 generate that many samples instead of 12,000 / 3,000."""
    n_train, n_test = train or DEFAULT_TRAIN, test or DEFAULT_TEST
    params = {**PARAMS, "train": n_train, "test": n_test,
              "features": kws_features.PARAMETERS, "resampler": kws_features.RESAMPLER}
    arrays, card = datacache.cached(
        NAME, VERSION, params, ["espeakng-loader"],
        lambda: generate(n_train, n_test, PARAMS), root=cache_dir)
    return {**arrays, "preprocessing": preprocessing(card), "card": card}
