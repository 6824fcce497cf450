"""Keyword-spotting features a phone can reproduce: MFCCs computed as the MLPerf Tiny KWS
reference computes them, and the 22,050 -> 16,000 Hz resampler for eSpeak NG's output. numpy
only.

MFCC (the MLPerf Tiny keyword_spotting reference, benchmark/training/keyword_spotting/
get_dataset.py in mlcommons/tiny, which uses TensorFlow's tf.signal; one difference: the mel
filters reach 8,000 Hz, the Nyquist frequency, where the reference stops at 4,000 Hz, so that
fricatives (the /f/ of "off") stay visible):

1. a 1 s clip at 16 kHz (16,000 samples, float in [-1, 1): int16 PCM / 32768);
2. frames of 480 samples (30 ms) every 320 samples (20 ms), no padding: 49 frames;
3. each frame times a periodic Hann window, w[k] = 0.5 - 0.5 cos(2 pi k / 480);
4. |FFT| (magnitude, not power) with 512 points (the frame zero-padded): 257 bins;
5. 40 triangular mel filters between 20 and 8,000 Hz on the HTK mel scale
   (mel = 1127 ln(1 + f / 700)), triangles in mel, bin 0 (DC) excluded: ``mel_matrix``;
6. log(mel + 1e-6) (natural log);
7. DCT-II of the 40 log-mel values scaled as tf.signal.mfccs_from_log_mel_spectrograms does,
   c_k = sqrt(2 / 40) * sum_m x_m cos(pi k (2m + 1) / 80) (the orthonormal DCT-II except that
   c_0 is also scaled by sqrt(2 / 40), not sqrt(1 / 40)); the first 10 coefficients are kept.

Result: (49, 10) per clip. Everything is computed in float64 and returned as float32.
"""

from __future__ import annotations

import functools
import math

import numpy as np

SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000
WINDOW = 480
STRIDE = 320
FFT_SIZE = 512
MEL_BINS = 40
MEL_LOW_HZ = 20.0
MEL_HIGH_HZ = 8000.0
LOG_OFFSET = 1e-6
NUM_MFCC = 10
FRAMES = 1 + (CLIP_SAMPLES - WINDOW) // STRIDE  # 49

PARAMETERS = {
    "sample_rate_hz": SAMPLE_RATE,
    "clip_samples": CLIP_SAMPLES,
    "audio": "mono int16 PCM scaled to float by / 32768",
    "frame_length": WINDOW,
    "frame_step": STRIDE,
    "frames": FRAMES,
    "padding": "none (frames that do not fit are dropped)",
    "window": "periodic Hann: 0.5 - 0.5 cos(2 pi k / 480), k = 0..479",
    "fft_length": FFT_SIZE,
    "spectrum": "magnitude |rfft(frame * window, 512)| (257 bins)",
    "mel_bins": MEL_BINS,
    "mel_low_hz": MEL_LOW_HZ,
    "mel_high_hz": MEL_HIGH_HZ,
    "mel_scale": "HTK, mel = 1127 ln(1 + f / 700)",
    "mel_filters": ("triangles with edges equally spaced in mel (42 points from 20 to 8000 Hz), "
                    "weights max(0, min(rising, falling)) evaluated at the mel of each FFT "
                    "bin's frequency k * 8000 / 256; bin 0 (DC) weight 0 (as "
                    "tf.signal.linear_to_mel_weight_matrix)"),
    "log": "natural log(mel + 1e-6)",
    "dct": ("DCT-II, c_k = sqrt(2 / 40) * sum_m x_m cos(pi k (2m + 1) / 80), k = 0..9 "
            "(tf.signal.mfccs_from_log_mel_spectrograms)"),
    "num_mfcc": NUM_MFCC,
    "layout": f"({FRAMES}, {NUM_MFCC}, 1): frames x coefficients x channel",
}


def hertz_to_mel(f):
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def mel_matrix(num_bins: int = FFT_SIZE // 2 + 1, sample_rate: int = SAMPLE_RATE,
               mel_bins: int = MEL_BINS, low_hz: float = MEL_LOW_HZ,
               high_hz: float = MEL_HIGH_HZ) -> np.ndarray:
    """(num_bins, mel_bins) weights mapping a magnitude spectrum to mel bands."""
    freqs = np.linspace(0.0, sample_rate / 2.0, num_bins)[1:]  # DC excluded
    bins_mel = hertz_to_mel(freqs)[:, None]
    edges = np.linspace(hertz_to_mel(low_hz), hertz_to_mel(high_hz), mel_bins + 2)
    lower, center, upper = edges[:-2][None, :], edges[1:-1][None, :], edges[2:][None, :]
    rising = (bins_mel - lower) / (center - lower)
    falling = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.concatenate([np.zeros((1, mel_bins)), weights], axis=0)


def dct_matrix(n_in: int = MEL_BINS, n_out: int = NUM_MFCC) -> np.ndarray:
    """(n_in, n_out): log-mel row vector @ this = the MFCCs (the scaling in the docstring)."""
    m = np.arange(n_in)[:, None]
    k = np.arange(n_out)[None, :]
    return math.sqrt(2.0 / n_in) * np.cos(np.pi * k * (2 * m + 1) / (2 * n_in))


def hann_window(n: int = WINDOW) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


_MEL = mel_matrix()
_DCT = dct_matrix()
_HANN = hann_window()


def frames(audio: np.ndarray) -> np.ndarray:
    """(..., 16000) -> (..., 49, 480) overlapping frames (a view)."""
    idx = np.arange(FRAMES)[:, None] * STRIDE + np.arange(WINDOW)[None, :]
    return audio[..., idx]


def mfcc(audio: np.ndarray) -> np.ndarray:
    """Clips (n, 16000) or (16000,) of float audio -> MFCCs (n, 49, 10) / (49, 10), float32."""
    audio = np.asarray(audio, dtype=np.float64)
    if audio.shape[-1] != CLIP_SAMPLES:
        raise ValueError(f"mfcc wants clips of {CLIP_SAMPLES} samples, got {audio.shape}")
    spectrum = np.abs(np.fft.rfft(frames(audio) * _HANN, n=FFT_SIZE, axis=-1))
    log_mel = np.log(spectrum @ _MEL + LOG_OFFSET)
    return (log_mel @ _DCT).astype(np.float32)


# ---- resampling ------------------------------------------------------------------------------

RESAMPLER = ("polyphase windowed sinc (band-limited interpolation): output sample n sits at "
             "input time n * fs_in / fs_out; the sinc spans 10 zero crossings each side, "
             "Kaiser window (beta 8.6), cutoff 0.9 x the output Nyquist frequency, each "
             "phase's taps normalised to sum 1 (unity gain at DC); the signal is zero outside "
             "its ends")
_ZEROS = 10
_BETA = 8.6
_ROLLOFF = 0.9


@functools.lru_cache(maxsize=4)
def _phase_table(up: int, down: int) -> np.ndarray:
    """(up, 2 * half) filter taps: row p for output samples at fractional input time p / up."""
    ratio = min(1.0, up / down) * _ROLLOFF  # cutoff, in units of the input Nyquist frequency
    half = int(math.ceil(_ZEROS / ratio))
    offsets = np.arange(-half + 1, half + 1)[None, :]  # taps k - floor(t)
    tau = (np.arange(up) / up)[:, None] - offsets       # t - k
    inside = np.clip(1.0 - (tau / half) ** 2, 0.0, None)
    taps = ratio * np.sinc(ratio * tau) * np.i0(_BETA * np.sqrt(inside)) / np.i0(_BETA)
    taps[np.abs(tau) >= half] = 0.0
    return taps / taps.sum(axis=1, keepdims=True)


def resample(x: np.ndarray, fs_in: int, fs_out: int) -> np.ndarray:
    """Resample a 1-D signal from ``fs_in`` to ``fs_out`` Hz (integers); float64 out, length
    ceil(len(x) * fs_out / fs_in). The signal is taken as zero outside its ends."""
    g = math.gcd(fs_in, fs_out)
    up, down = fs_out // g, fs_in // g
    x = np.asarray(x, dtype=np.float64)
    if up == down:
        return x.copy()
    table = _phase_table(up, down)  # cached: read only
    half = table.shape[1] // 2
    n_out = -(-len(x) * up // down)
    pos = np.arange(n_out) * down                 # output n sits at input time pos / up
    base, phase = pos // up, pos % up
    padded = np.concatenate([np.zeros(half), x, np.zeros(half + 1)])
    idx = base[:, None] + np.arange(-half + 1, half + 1)[None, :] + half
    return np.einsum("nk,nk->n", padded[idx], table[phase])
