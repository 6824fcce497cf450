"""Text generation from a .tflite language model: numpy + a LiteRT interpreter only.

The model: int32 ``tokens`` (1, T) and optionally int32 ``positions`` (1, T) inputs (found by
name: the Keras input names survive conversion as ``serving_default_<name>:0``), one output of
per-position logits (1, T, V), float or int8 (dequantized with the tensor's own scale and zero
point, as pipeline/tflite/runtime.py reads every output). The model must be causal: the
logits at position t depend on tokens 0..t only.

One invoke per generated token over a sliding window: while the context is shorter than T it is
fed left-aligned (positions 0..T-1, the unused tail padded with id 0, which a causal model
never attends to from earlier positions) and the logits at its last position are read; once
longer, the last T tokens are fed and position T-1 is read. Greedy decoding takes the arg max
(the lowest id on a tie); sampling draws from softmax(logits / temperature), optionally
restricted to the top_k ids, with numpy's PCG64 seeded by ``seed``.

A model the caller did not write itself should run with ``isolated=True``: pre-checked by the
bounded reader and invoked in a child process (pipeline/tflite/isolated.py, which loads it
anew per request; there ``ms_per_token`` is None, as it would time the child's reloads).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.core.errors import ModelFileError, UsageError
from pipeline.tflite.isolated import IsolatedInterpreter
from pipeline.tflite.runtime import ModelRunner
from pipeline.tflite.tflite_model import read_file

INPUT_NAMES = ("tokens", "positions")


@dataclass(frozen=True)
class Generated:
    prompt: str
    text: str                  # the continuation only (the prompt is not repeated)
    ids: tuple                 # its token ids
    decoding: str              # "greedy" or "sampled (temperature t, top_k k, seed s)"
    window: int                # T: tokens the model sees per invoke
    ms_per_token: float | None  # wall time per generated token on this host (one invoke each)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "text": self.text, "decoding": self.decoding,
                "window": self.window, "tokens": len(self.ids),
                "ms_per_token": self.ms_per_token}


class Vocabulary:
    """The id table: entry i is the text of id i; entries that are not one character (such as
    '<other>') are never produced by encode except as ``unknown_id``."""

    def __init__(self, table: Sequence[str], unknown_id: int = 0):
        self.table = [str(t) for t in table]
        if not self.table or not 0 <= unknown_id < len(self.table):
            raise UsageError("The vocabulary table is empty or its unknown id is out of range",
                             f"{len(self.table)} entries, unknown_id {unknown_id}",
                             "Pass the dataset's preprocessing['vocab'] and ['unknown_id']")
        self.unknown_id = int(unknown_id)
        self.index = {t: i for i, t in enumerate(self.table) if len(t) == 1}

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, self.unknown_id) for c in text]

    def decode(self, ids) -> str:
        return "".join("\ufffd" if int(i) == self.unknown_id else self.table[int(i)]
                       for i in ids)


def _plain_name(name: str) -> str:
    return re.sub(r":\d+$", "", re.sub(r"^serving_default_", "", name))


def input_order(names: Sequence[str], source: str) -> dict:
    """{"tokens": i, "positions": i or None}: which interpreter input is which."""
    plain = [_plain_name(n) for n in names]
    found = {}
    for want in INPUT_NAMES:
        exact = [i for i, n in enumerate(plain) if n == want]
        loose = exact or [i for i, n in enumerate(plain) if want.rstrip("s") in n.lower()]
        if len(loose) > 1:
            raise ModelFileError(f"Several model inputs could be '{want}'", f"{source}: "
                                 f"{list(names)}", "Name the Keras inputs 'tokens' and "
                                 "'positions' before converting")
        found[want] = loose[0] if loose else None
    if len(names) == 1 and found["tokens"] is None:
        found["tokens"] = 0
    if found["tokens"] is None or len(names) != 1 + (found["positions"] is not None):
        raise ModelFileError("The model's inputs are not a language model's (int32 tokens, "
                             "optionally positions)", f"{source}: {list(names)}",
                             "Convert a model whose inputs are named 'tokens' and "
                             "'positions' (models/char_lm.py)")
    return found


class _Session:
    """Runs one window through the model: in this process or in the isolated child."""

    def __init__(self, content: bytes, source: str, isolated: bool, runtime, num_threads):
        self.child = None
        if isolated:
            self.child = IsolatedInterpreter(runtime=runtime, num_threads=num_threads)
            _, desc = self.child.run(content, None, batch_size=1, source=source)
            ins, outs = desc["inputs"], desc["outputs"]
        else:
            self.runner = ModelRunner(content, batch_size=1, runtime=runtime,
                                      num_threads=num_threads, source=source)
            ins = [s.to_dict() for s in self.runner.inputs]
            outs = [s.to_dict() for s in self.runner.outputs]
        self.content, self.source = content, source
        self.order = input_order([d["name"] for d in ins], source)
        shape = ins[self.order["tokens"]]["shape"]
        out_shape = outs[0]["shape"] if len(outs) == 1 else None
        if len(shape) != 2 or shape[1] < 1 or out_shape is None or len(out_shape) != 3:
            raise ModelFileError("The model is not a per-position language model (tokens "
                                 "(batch, T) -> one logits output (batch, T, vocab))",
                                 f"{source}: inputs {[d['shape'] for d in ins]}, outputs "
                                 f"{[d['shape'] for d in outs]}", "Convert a model like "
                                 "models/char_lm.py with a fixed window T")
        self.window, self.vocab = int(shape[1]), int(out_shape[2])
        self.n_inputs = len(ins)

    def logits(self, window_ids: np.ndarray) -> np.ndarray:
        """(T, vocab) float logits for one window of ids."""
        arrays: list = [None] * self.n_inputs
        arrays[self.order["tokens"]] = window_ids[None, :].astype(np.int32)
        if self.order["positions"] is not None:
            arrays[self.order["positions"]] = np.arange(self.window, dtype=np.int32)[None, :]
        if self.child is not None:
            outs, _ = self.child.run(self.content, arrays, batch_size=1, precheck=False,
                                     source=self.source)
        else:
            outs = self.runner.run(arrays, batch_size=1)
        return np.asarray(outs[0], np.float64)[0]

    def close(self):
        if self.child is not None:
            self.child.close()


def next_id(logits: np.ndarray, rng, temperature: float, top_k: int) -> int:
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits / temperature
    if 0 < top_k < len(z):
        z = np.where(z >= np.sort(z)[-top_k], z, -np.inf)
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))


def _check_args(prompt, steps, temperature, top_k):
    if not isinstance(prompt, str) or not prompt:
        raise UsageError("The prompt is empty", repr(prompt),
                         "Pass at least one character to continue")
    if steps < 1:
        raise UsageError("steps must be at least 1", steps, "Ask for e.g. 200 characters")
    if not temperature >= 0:
        raise UsageError("temperature must be >= 0", temperature,
                         "Use 0 for greedy decoding, or e.g. 0.8 to sample")
    if top_k < 0:
        raise UsageError("top_k must be >= 0", top_k, "Use 0 for no limit, or e.g. 10")


def generate(model: bytes | str | os.PathLike, prompt: str, vocab: Sequence[str], *,
             steps: int = 200, temperature: float = 0.0, top_k: int = 0, seed: int = 0,
             unknown_id: int = 0, isolated: bool = False, runtime: str | None = None,
             num_threads: int | None = None, source: str | None = None) -> Generated:
    """Continue ``prompt`` by ``steps`` tokens with the .tflite ``model`` (bytes or a path).

    ``vocab`` is the id table (the dataset's preprocessing['vocab']); temperature 0 decodes
    greedily, above 0 samples (seeded)."""
    _check_args(prompt, steps, temperature, top_k)
    voc = Vocabulary(vocab, unknown_id)
    if isinstance(model, (bytes, bytearray, memoryview)):
        content, source = bytes(model), source or "<bytes>"
    else:
        content, source = read_file(model), source or os.fspath(model)
    session = _Session(content, source, isolated, runtime, num_threads)
    try:
        if session.vocab != len(voc.table):
            raise UsageError("The vocabulary table does not match the model's output",
                             f"{len(voc.table)} entries, model logits {session.vocab}",
                             "Pass the table of the dataset the model was trained on")
        ids, new = voc.encode(prompt), []
        rng, t = np.random.default_rng(seed), session.window
        start = time.perf_counter()
        for _ in range(steps):
            ctx = ids[-t:]
            window = np.zeros(t, np.int32)
            window[: len(ctx)] = ctx
            nxt = next_id(session.logits(window)[len(ctx) - 1], rng, temperature, top_k)
            ids.append(nxt)
            new.append(nxt)
        elapsed = time.perf_counter() - start
    finally:
        session.close()
    decoding = ("greedy" if temperature == 0 else
                f"sampled (temperature {temperature:g}, top_k {top_k or 'all'}, seed {seed})")
    return Generated(prompt, voc.decode(new), tuple(new), decoding, t,
                     None if isolated else 1000.0 * elapsed / steps)
