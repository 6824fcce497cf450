"""eSpeak NG through ctypes: words to 16 kHz audio, for the keyword-spotting dataset.

The ``espeakng-loader`` package (the `zoo` extra) ships libespeak-ng and its espeak-ng-data
directory; this module drives the library's C API (espeak-ng's
src/include/espeak-ng/speak_lib.h, plus espeak_ng_SetRandSeed from espeak_ng.h):
espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, ...), espeak_SetSynthCallback (collects the int16
samples), espeak_SetVoiceByName("en-us+m3"), espeak_SetParameter (rate, pitch, range),
espeak_Synth.

Determinism. The library seeds its noise generator (breathy and whispered voices) from the
clock at initialisation and keeps synthesis state between calls (a pitch-flutter phase, a
static in wavegen.c). So the noise seed is set before every utterance, and one ``Engine``
lives in one process for one fixed list of utterances (models/kws.py gives every block of
samples a fresh child process): the audio then depends only on that list.

Only ``Engine`` touches the C library; nothing here runs at import.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.kws_features import SAMPLE_RATE, resample
from pipeline.core.errors import DataError

# speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000   # espeakINITIALIZE_DONT_EXIT: report missing data, do not exit()
CHARS_UTF8 = 1                  # espeakCHARS_UTF8 (no espeakENDPAUSE: no trailing pause)
POS_CHARACTER = 1
EE_OK = 0
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE = 1, 2, 3, 4

# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events)
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)
EXTRA_FIX = "pip install 'qat-deploy[zoo]' (in a checkout: make venv)"


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str        # "ACCENT+VARIANT", e.g. "en-us+m3" (a file of espeak-ng-data/voices/!v)
    rate: int         # words per minute, 80..450
    pitch: int        # 0..100 (50 normal)
    pitch_range: int  # 0..100 (50 normal)
    seed: int         # the library's noise seed for this utterance


def loader():
    """The espeakng_loader module, or a one-line DataError naming the extra."""
    try:
        import espeakng_loader
    except ImportError as exc:
        raise DataError("The kws dataset is synthesised with eSpeak NG, whose package is not "
                        "installed", f"import espeakng_loader: {exc}", EXTRA_FIX) from exc
    return espeakng_loader


def data_dir() -> Path:
    try:
        return Path(loader().get_data_path())
    except RuntimeError as exc:  # the package's own check that espeak-ng-data exists
        raise DataError("espeakng-loader has no espeak-ng-data directory", str(exc),
                        f"Reinstall it: {EXTRA_FIX}") from exc


def variants() -> list[str]:
    """The voice variants espeak-ng-data ships (file names of voices/!v), sorted."""
    vdir = data_dir() / "voices" / "!v"
    if not vdir.is_dir():
        raise DataError("espeak-ng-data has no voice variants", str(vdir),
                        f"Reinstall espeakng-loader: {EXTRA_FIX}")
    return sorted(p.name for p in vdir.iterdir() if p.is_file() and " " not in p.name)


def _bind(lib) -> None:
    c_int, c_uint, c_char_p, c_void_p = ctypes.c_int, ctypes.c_uint, ctypes.c_char_p, \
        ctypes.c_void_p
    sigs = {
        "espeak_Initialize": ([c_int, c_int, c_char_p, c_int], c_int),
        "espeak_SetSynthCallback": ([_CALLBACK], None),
        "espeak_SetVoiceByName": ([c_char_p], c_int),
        "espeak_SetParameter": ([c_int, c_int, c_int], c_int),
        "espeak_Synth": ([c_void_p, ctypes.c_size_t, c_uint, c_int, c_uint, c_uint,
                          ctypes.POINTER(c_uint), c_void_p], c_int),
        "espeak_Info": ([ctypes.POINTER(c_char_p)], c_char_p),
        "espeak_ng_SetRandSeed": ([ctypes.c_long], c_int),
        "espeak_Terminate": ([], c_int),
    }
    for name, (args, res) in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res


class Engine:
    """One initialised libespeak-ng in this process. Use one per process (see the module
    docstring): the library is a process-wide singleton."""

    def __init__(self):
        mod = loader()
        try:
            self.lib = ctypes.CDLL(mod.get_library_path())
            _bind(self.lib)
        except (OSError, AttributeError) as exc:
            raise DataError("libespeak-ng from espeakng-loader cannot be loaded",
                            f"{mod.get_library_path()}: {exc}", EXTRA_FIX) from exc
        # path: the directory that contains espeak-ng-data
        root = str(data_dir().parent).encode()
        self.rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, root,
                                               INITIALIZE_DONT_EXIT)
        if self.rate <= 0:
            raise DataError("eSpeak NG failed to initialise", f"espeak_Initialize returned "
                            f"{self.rate} for {root.decode()}", f"Reinstall: {EXTRA_FIX}")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced while the library holds it
        self.lib.espeak_SetSynthCallback(self._callback)
        self.version = self.lib.espeak_Info(None).decode()

    def _collect(self, wav, n, _events) -> int:
        if wav and n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # continue

    def _check(self, rc: int, call: str, value) -> None:
        if rc != EE_OK:
            raise DataError(f"eSpeak NG refused {call}", f"{value!r} (error {rc})",
                            "Use a voice and parameters the bundled espeak-ng-data has")

    def synth_native(self, u: Utterance) -> np.ndarray:
        """int16 samples at the library's own rate (self.rate)."""
        self._check(self.lib.espeak_SetVoiceByName(u.voice.encode()), "the voice", u.voice)
        for param, value in ((PARAM_RATE, u.rate), (PARAM_PITCH, u.pitch),
                             (PARAM_RANGE, u.pitch_range), (PARAM_VOLUME, 100)):
            self._check(self.lib.espeak_SetParameter(param, value, 0), "a parameter",
                        (param, value))
        self.lib.espeak_ng_SetRandSeed(u.seed)
        self._chunks = []
        text = u.text.encode() + b"\0"
        self._check(self.lib.espeak_Synth(text, len(text), 0, POS_CHARACTER, 0, CHARS_UTF8,
                                          None, None), "the text", u.text)
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)

    def synth(self, u: Utterance) -> np.ndarray:
        """The utterance at 16 kHz, float64 in [-1, 1) (int16 / 32768), leading and trailing
        samples below 1 % of the peak trimmed."""
        x = resample(self.synth_native(u).astype(np.float64) / 32768.0, self.rate,
                     SAMPLE_RATE)
        loud = np.flatnonzero(np.abs(x) >= 0.01 * np.abs(x).max()) if len(x) else []
        if len(loud) == 0:
            raise DataError("eSpeak NG produced no audio", u, "Check the voice and the text")
        return x[loud[0]:loud[-1] + 1]


def cpu_workers() -> int:
    """Child processes for synthesis: one per core this process may use, at most 2."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(2, n))
