"""benchmark_model: output parser on the real formats, flag builder, ELF/ABI checks.

The sample outputs below are the formats printed by tensorflow/lite/tools/benchmark
(benchmark_model.cc OnBenchmarkEnd, tsl::Stat::OutputToStream, StatWithPercentiles, the
profile summarizer, tools/logging.h prefixes, the APK's JNI listener) - see the docstring of
android_harness/benchmark_tool.py for the exact sources.
"""

from __future__ import annotations

import pytest

from android_harness import benchmark_tool as bt
from android_harness.errors import AbiMismatchError, BenchmarkToolError, OutputParseError

MODERN = """INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Graph: [/data/local/tmp/mobilenet.tflite]
INFO: Loaded model /data/local/tmp/mobilenet.tflite
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 4.56118
INFO: Initialized session in 52.687ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=35 first=19105 curr=13909 min=13585 max=19105 avg=14452.5 std=1240 p5=13600 median=14100 p95=16900

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=70 first=14941 curr=14066 min=13728 max=16145 avg=14290.9 std=452 p5=13790 median=14212 p95=15300

INFO: Inference timings in us: Init: 52687, First inference: 19105, Warmup (avg): 14452.5, Inference (avg): 14290.9
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=21.9492 overall=34.5234
INFO: Overall peak memory footprint (MB) via periodic monitoring: 38.1016
"""

CLASSIC = """INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=500 first=1206 curr=1002 min=987 max=1301 avg=1014.8 std=52

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=1003 first=1001 curr=990 min=970 max=1250 avg=997.331 std=31

INFO: Inference timings in us: Init: 5685, First inference: 1206, Warmup (avg): 1014.8, Inference (avg): 997.331
INFO: Memory footprint delta from the start of the tool (MB): init=3.47266 overall=10.4766
"""

# Older builds: no severity prefix; a phase whose runs all took the same time; no warm-up.
BARE_ALL_SAME = """Running benchmark for at least 0 iterations and at least -1 seconds but terminate if exceeding 150 seconds.
count=0

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 curr=2000(all same)

Inference timings in us: Init: 3000, First inference: 2000, Warmup (avg): -nan, Inference (avg): 2000
"""

# A long run: C++ iostreams print doubles with 6 significant digits, hence the exponent.
SCIENTIFIC = """INFO: count=3 first=1400000 curr=1200000 min=1200000 max=1400000 avg=1.26667e+06 std=94280

INFO: count=10 first=1234567 curr=1234000 min=1230000 max=1240000 avg=1.23457e+06 std=3000

INFO: Inference timings in us: Init: 2500000, First inference: 1400000, Warmup (avg): 1.26667e+06, Inference (avg): 1.23457e+06
"""

# The benchmark APK logs to logcat (tag tflite); `logcat -v brief` prefixes every line.
LOGCAT = """--------- beginning of main
I/tflite  ( 4242): count=20 first=392063 curr=392613 min=390939 max=416049 avg=392865 std=3443
I/tflite  ( 4242): count=50 first=394833 curr=392613 min=390939 max=416049 avg=392865 std=3443
I/tflite  ( 4242): Inference timings in us: Init: 164025, First inference: 394833, Warmup (avg): 394149, Inference (avg): 392865
E/tflite  ( 4242): Average inference timings in us: Warmup: 394149, Init: 164025, Inference: 392865Overall max resident set size = 12.5 MB
"""

# TF <= 1.14 builds and the APK's JNI listener: only the "Average" line.
LEGACY = ("tflite  : Average inference timings in us: Warmup: 91471, Init: 4108, "
          "Inference: 80660.1\n")

PROFILE_NEW = """INFO: count=5 first=100 curr=100 min=90 max=110 avg=100 std=5
INFO: count=50 first=100 curr=100 min=90 max=110 avg=100 std=5
INFO: Inference timings in us: Init: 10, First inference: 100, Warmup (avg): 100, Inference (avg): 100
INFO: Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Run Order ==============================
\t             [node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t                QUANTIZE\t    0.199\t    0.203\t  1.328%\t  1.328%\t     0.000\t        1\t[tfl.quantize]:0
\t Convolution (NHWC, QC8) IGEMM\t    0.398\t    0.407\t  2.658%\t  3.986%\t     0.000\t        1\tDelegate/Convolution (NHWC, QC8) IGEMM:0

============================== Top by Computation Time ==============================
\t             [node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t Convolution (NHWC, QC8) IGEMM\t    0.398\t    0.407\t  2.658%\t  3.986%\t     0.000\t        1\tDelegate/Convolution (NHWC, QC8) IGEMM:0

Number of nodes executed: 2
============================== Summary by node type ==============================
\t             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]
\t Convolution (NHWC, QC8) IGEMM\t        1\t     0.407\t    66.722%\t    66.722%\t     0.000\t        1
\t                QUANTIZE\t        1\t     0.203\t    33.278%\t   100.000%\t     0.000\t        1

Timings (microseconds): count=50 first=610 curr=610 min=600 max=620 avg=610 std=5
Memory (bytes): count=0
2 nodes observed
"""

# Older summarizer: an extra [start] column (stats_calculator.cc before 2021).
PROFILE_OLD = """count=5 first=100 curr=100 min=90 max=110 avg=100 std=5
count=50 first=100 curr=100 min=90 max=110 avg=100 std=5
Inference timings in us: Init: 10, First inference: 100, Warmup (avg): 100, Inference (avg): 100
Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Run Order ==============================
\t             [node type]\t          [start]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t                 CONV_2D\t            0.066\t   87.754\t   60.957\t  2.066%\t  2.066%\t     0.000\t        1\t[MobilenetV1/Conv2d_0/Relu6]:0
\t       DEPTHWISE_CONV_2D\t           61.033\t   53.628\t   49.870\t  1.691%\t  3.757%\t     0.000\t        1\t[MobilenetV1/Conv2d_1_depthwise/Relu6]:1
"""


@pytest.mark.parametrize("text, median, avg, count, warmup_count, init, first", [
    (MODERN, 14212, 14290.9, 70, 35, 52687, 19105),
    (CLASSIC, None, 997.331, 1003, 500, 5685, 1206),
    (BARE_ALL_SAME, None, 2000, 50, 0, 3000, 2000),
    (SCIENTIFIC, None, 1.23457e+06, 10, 3, 2.5e+06, 1400000),
    (LOGCAT, None, 392865, 50, 20, 164025, 394833),
], ids=["modern", "classic", "bare-all-same", "scientific", "apk-logcat"])
def test_parse_timing_variants(text, median, avg, count, warmup_count, init, first):
    rep = bt.parse_output(text)
    assert rep.ok
    assert rep.inference.count == count and rep.inference.avg == pytest.approx(avg)
    assert rep.inference.median == median
    assert rep.warmup.count == warmup_count
    assert rep.init_us == pytest.approx(init) and rep.first_us == pytest.approx(first)
    assert rep.inference_avg_us == pytest.approx(avg)


def test_parse_modern_fields():
    rep = bt.parse_output(MODERN)
    s = rep.inference
    assert (s.first, s.curr, s.min, s.max, s.std, s.p5, s.p95) == (14941, 14066, 13728, 16145,
                                                                   452, 13790, 15300)
    assert (rep.memory_init_mb, rep.memory_overall_mb, rep.memory_peak_mb) == (
        21.9492, 34.5234, 38.1016)
    assert rep.model_size_mb == 4.56118 and rep.warmup_avg_us == 14452.5


def test_all_same_stat_fills_every_field():
    s = bt.parse_output(BARE_ALL_SAME).inference
    assert (s.min, s.max, s.avg, s.std, s.first) == (2000, 2000, 2000, 0.0, 2000)
    rep = bt.parse_output(BARE_ALL_SAME)
    assert rep.warmup_avg_us is None  # "-nan": the warm-up had no runs


def test_legacy_average_line_only():
    rep = bt.parse_output(LEGACY)
    assert rep.inference_avg_us == pytest.approx(80660.1)
    assert (rep.warmup_avg_us, rep.init_us) == (91471, 4108)
    assert rep.inference.avg == pytest.approx(80660.1) and rep.inference.std is None


@pytest.mark.parametrize("text, first_row", [
    (PROFILE_NEW, {"node type": "QUANTIZE", "first": 0.199, "avg ms": 0.203, "%": 1.328,
                   "times called": 1.0, "name": "[tfl.quantize]:0"}),
    (PROFILE_OLD, {"node type": "CONV_2D", "start": 0.066, "first": 87.754, "avg ms": 60.957,
                   "name": "[MobilenetV1/Conv2d_0/Relu6]:0"}),
], ids=["current", "with-start-column"])
def test_op_profile_table(text, first_row):
    rep = bt.parse_output(text)
    assert len(rep.op_profile) == 2
    for key, value in first_row.items():
        assert rep.op_profile[0][key] == value
    # A node type with spaces and commas stays one cell.
    if text is PROFILE_NEW:
        assert rep.op_profile[1]["node type"] == "Convolution (NHWC, QC8) IGEMM"
        assert [r["node type"] for r in rep.op_summary] == ["Convolution (NHWC, QC8) IGEMM",
                                                             "QUANTIZE"]
        assert rep.op_summary[0]["count"] == 1.0


@pytest.mark.parametrize("line, expected", [
    ("INFO: Explicitly applied GPU delegate, and the model graph will be completely executed "
     "by the delegate.", {"delegate": "GPU", "status": "full", "delegate_kernels": 1}),
    ("INFO: Explicitly applied NNAPI delegate, and the model graph will be partially executed "
     "by the delegate w/ 3 delegate kernels.",
     {"delegate": "NNAPI", "status": "partial", "delegate_kernels": 3}),
    ("INFO: Though XNNPACK delegate is explicitly applied, the model graph will not be "
     "executed by the delegate.", {"delegate": "XNNPACK", "status": "none",
                                   "delegate_kernels": 0}),
])
def test_delegation_lines(line, expected):
    assert bt.parse_output(line + "\n" + CLASSIC).delegation == expected


def test_fallback_with_require_full_delegation_is_an_error():
    text = ("INFO: STARTING!\nERROR: Disallowed CPU fallback detected.\n"
            "ERROR: Benchmarking failed.\n")
    with pytest.raises(BenchmarkToolError, match="Disallowed CPU fallback detected"):
        bt.parse_output(text)


def test_unparseable_output_quotes_first_lines():
    with pytest.raises(OutputParseError) as info:
        bt.parse_output("hello from a shell\nsecond line\nthird line\nfourth line\n")
    msg = str(info.value)
    assert "hello from a shell | second line | third line" in msg and "fourth" not in msg
    assert "\n" not in msg
    with pytest.raises(OutputParseError, match="no output at all"):
        bt.parse_output("")


def test_tool_error_is_quoted():
    text = ("INFO: STARTING!\nERROR: Could not open '/data/local/tmp/x.tflite'.\n"
            "ERROR: Failed to mmap model /data/local/tmp/x.tflite\n")
    with pytest.raises(BenchmarkToolError, match="Could not open '/data/local/tmp/x.tflite'"):
        bt.parse_output(text)


def test_output_cut_after_warmup_is_not_taken_as_a_result():
    cut = MODERN.split("INFO: Running benchmark for at least 50")[0]
    with pytest.raises(BenchmarkToolError, match="stopped after the warm-up"):
        bt.parse_output(cut)


# -- flags --------------------------------------------------------------------------------------
BASE = dict(threads=4, warmup_runs=3, warmup_seconds=0.5, min_runs=50, min_seconds=1.0,
            max_seconds=150.0)


@pytest.mark.parametrize("delegate, flag", [("cpu", "--use_xnnpack=false"),
                                            ("xnnpack", "--use_xnnpack=true"),
                                            ("gpu", "--use_gpu=true"),
                                            ("nnapi", "--use_nnapi=true")])
def test_delegate_flags(delegate, flag):
    flags = bt.build_flags("/d/m.tflite", delegate=delegate, **BASE)
    assert flag in flags
    assert flags[:7] == ["--graph=/d/m.tflite", "--num_threads=4", "--warmup_runs=3",
                         "--warmup_min_secs=0.5", "--num_runs=50", "--min_secs=1",
                         "--max_secs=150"]


def test_input_flags_escape_colons_and_reject_commas():
    flags = bt.build_flags("/d/m.tflite", delegate="xnnpack", inputs=[
        ("serving_default_x:0", (1, 8, 8, 1), "/d/in0.bin"), ("y", (1, 3), "/d/in1.bin")],
        **BASE)
    assert "--input_layer=serving_default_x:0,y" in flags
    assert "--input_layer_shape=1,8,8,1:1,3" in flags
    # benchmark_tflite_model.h: ':' inside a name is written '::'
    assert "--input_layer_value_files=serving_default_x::0:/d/in0.bin,y:/d/in1.bin" in flags
    with pytest.raises(BenchmarkToolError, match="contains ','"):
        bt.build_flags("/d/m.tflite", delegate="xnnpack", inputs=[("a,b", (1,), "/d/x")],
                       **BASE)


def test_optional_flags():
    flags = bt.build_flags("/m", delegate="gpu", op_profiling=True,
                           require_full_delegation=True, peak_memory=True, **BASE)
    assert {"--enable_op_profiling=true", "--require_full_delegation=true",
            "--report_peak_memory_footprint=true"} <= set(flags)


# -- binary -------------------------------------------------------------------------------------
@pytest.mark.parametrize("abi", ["arm64-v8a", "armeabi-v7a", "x86_64", "x86"])
def test_elf_abi(make_binary, abi):
    assert bt.elf_abi(make_binary(abi)) == abi


def test_abi_mismatch_names_the_right_download(make_binary):
    with pytest.raises(AbiMismatchError) as info:
        bt.check_abi(make_binary("armeabi-v7a"), "arm64-v8a", "R58M")
    msg = str(info.value)
    assert "armeabi-v7a" in msg and "ro.product.cpu.abi=arm64-v8a" in msg
    assert "android_aarch64_benchmark_model" in msg and "R58M" in msg


def test_not_an_elf(tmp_path):
    page = tmp_path / "benchmark_model"
    page.write_text("<!doctype html><html>Not Found</html>")
    with pytest.raises(BenchmarkToolError, match="not an ELF executable"):
        bt.elf_abi(page)


def test_resolve_binary_from_flag_env_or_error(tmp_path, monkeypatch, fake_binary):
    monkeypatch.delenv(bt.BENCHMARK_MODEL_ENV, raising=False)
    with pytest.raises(BenchmarkToolError, match="BENCHMARK_MODEL_PATH") as info:
        bt.resolve_binary(None)
    assert "android_aarch64_benchmark_model" in str(info.value)
    monkeypatch.setenv(bt.BENCHMARK_MODEL_ENV, str(fake_binary))
    assert bt.resolve_binary(None) == fake_binary
    with pytest.raises(BenchmarkToolError, match="does not exist"):
        bt.resolve_binary(str(tmp_path / "nope"))


# -- every generation's timing lines (formats from the TensorFlow sources of each version) ----
# TF 1.8/1.9 (tensorflow/contrib/lite/tools/benchmark_model.cc, std::cout): init in SECONDS,
# the average first and without a key, no Stat lines.
TF_1_8 = """Initialized session in 0.004108s
Average inference timings in us: 80660 , Warmup: 91471,
"""
# TF 1.10-1.12 (contrib/lite/tools/benchmark/benchmark_model.cc): "no stats" is the average.
TF_1_10 = """Initialized session in 4.108ms
count=1 curr=91471
count=50 first=80100 curr=80660 min=80000 max=81000 avg=80660 std=250
Average inference timings in us: Warmup: 91471, Init: 4108, no stats: 80660
"""
# TF 1.13-2.1 (lite/tools/benchmark): "Inference" is the average; "Initialized ... ms".
TF_1_13 = """Initialized session in 4.108ms
count=1 curr=91471
count=50 first=80100 curr=80660 min=80000 max=81000 avg=80660 std=250
Average inference timings in us: Warmup: 91471, Init: 4108, Inference: 80660
"""
# TF 2.x without the Init item (a timings line cut by a log filter): the init time comes
# from "Initialized session in X ms." instead.
TF_2_SESSION_ONLY = """INFO: Initialized session in 4.108ms.
INFO: count=1 curr=91471
INFO: count=50 first=80100 curr=80660 min=80000 max=81000 avg=80660 std=250
INFO: Inference timings in us: First inference: 91471, Warmup (avg): 91471, Inference (avg): 80660
"""
# TensorFlow's own (not Lite) benchmark_model of the 1.x era: no init item, "with stats" too.
TF_CORE = """Initialized session in 0.004108s
count=50 first=80100 curr=80660 min=80000 max=81000 avg=80660 std=250
Average inference timings in us: Warmup: 91471, no stats: 80660, with stats: 81000
"""


@pytest.mark.parametrize("text", [TF_1_8, TF_1_10, TF_1_13, TF_2_SESSION_ONLY, TF_CORE],
                         ids=["tf1.8-seconds", "tf1.10-no-stats", "tf1.13-average",
                              "tf2-session-line", "tf-core-with-stats"])
def test_every_generation_gives_init_and_average(text):
    rep = bt.parse_output(text)
    assert rep.inference_avg_us == pytest.approx(80660)
    assert rep.init_us == pytest.approx(4108)
    assert rep.warmup_avg_us == pytest.approx(91471)
    assert rep.inference.avg == pytest.approx(80660)


def test_the_timing_line_wins_over_the_session_line():
    rep = bt.parse_output(MODERN.replace("Initialized session in 52.687ms.",
                                         "Initialized session in 99ms."))
    assert rep.init_us == 52687


@pytest.mark.parametrize("text", [
    "Average inference timings in us: Warmup: abc, Init: ?, no stats: none\n",
    "Initialized session in 4.108ms\n",
], ids=["timing-line-without-numbers", "init-only"])
def test_a_timing_line_without_an_average_is_unparseable(text):
    with pytest.raises(OutputParseError, match="could not be parsed"):
        bt.parse_output(text)
