"""Text written by the run's own .tflite language models, for the report.

For a sequence run whose dataset describes its tokenizer (preprocessing 'vocab', and
'unknown_id'), each .tflite variant continues one prompt twice: greedily and by seeded
sampling (temperature 0.8, top-k 20, the run's seed). The prompt is the start of the first
held-out test window, so the text the model continues is text it never trained on. The
continuations come from pipeline/tflite/generate.py: the converted file itself, run by the
LiteRT interpreter, one invoke per character, so a reader of report.md sees what the int8
model writes, and how fast it does on this host.
"""

from __future__ import annotations

from pipeline.core.errors import QatError
from pipeline.core.records import Variant
from pipeline.tflite import generate

PROMPT_TOKENS = 24     # characters of the first test window used as the prompt
STEPS = 120            # characters generated per sample
TEMPERATURE, TOP_K = 0.8, 20
VARIANTS = (Variant.FLOAT32, Variant.QAT_INT8, Variant.QAT_W4A8, Variant.PTQ_INT8)


def prompt_of(dataset) -> str | None:
    """The first PROMPT_TOKENS ids of the first test window, as text (None: no tokenizer)."""
    pre = dataset.preprocessing or {}
    vocab = pre.get("vocab")
    x = dataset.x_test
    tokens = x.get("tokens") if isinstance(x, dict) else None
    if not vocab or tokens is None or not len(tokens):
        return None
    voc = generate.Vocabulary(vocab, int(pre.get("unknown_id", 0)))
    return voc.decode(tokens[0][:PROMPT_TOKENS])


def text_samples(inputs, conv, seed: int, log=print) -> tuple[dict, ...]:
    """One entry per variant and decoding; empty when the run is not a language model."""
    if inputs.task.kind != "sequence" or conv is None:
        return ()
    prompt = prompt_of(inputs.dataset)
    if prompt is None:
        return ()
    pre = inputs.dataset.preprocessing
    out = []
    for variant in VARIANTS:
        c = conv.by_variant.get(variant)
        if c is None:
            continue
        for temperature in (0.0, TEMPERATURE):
            try:
                g = generate.generate(c.content, prompt, pre["vocab"], steps=STEPS,
                                      temperature=temperature,
                                      top_k=TOP_K if temperature else 0, seed=seed,
                                      unknown_id=int(pre.get("unknown_id", 0)),
                                      source=variant.filename)
            except QatError as exc:  # e.g. inputs not named tokens/positions: say so, go on
                log(f"text sample: {variant.filename}: {exc}")
                return tuple(out)
            out.append({"variant": variant.value, **g.to_dict()})
    return tuple(out)


def markdown(samples: tuple[dict, ...]) -> list[str]:
    if not samples:
        return []
    lines = ["", "## Text written by the .tflite files", "",
             f"Prompt (the start of the first test window): `{_show(samples[0]['prompt'])}`",
             ""]
    for s in samples:
        ms = f", {s['ms_per_token']:.2f} ms/character" if s.get("ms_per_token") else ""
        lines += [f"- `{s['variant']}`, {s['decoding']}{ms}:", "",
                  "  ```", *("  " + line for line in (s["prompt"] + s["text"]).split("\n")),
                  "  ```"]
    return lines


def _show(text: str) -> str:
    return text.replace("\n", "\\n").replace("\t", "\\t").replace("`", "'")
