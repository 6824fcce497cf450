#!/usr/bin/env bash
# The core install, for real (`make check-core`): a fresh venv in a temp dir, `pip install .`
# with no extras (numpy + ai-edge-litert), TensorFlow, tf-keras, Keras 3, tfmot and
# scikit-learn absent, then `qat inspect`, `qat verify --reference` and `android-harness host`
# on the demo's artifacts, each of which must exit 0, and `qat run` / `qat convert`, which must
# exit 2 naming the `qat` extra. The artifacts come from `make demo` (the dev venv), run first
# if they are missing. The venv is removed on exit, pass or fail.
#
#   PYTHON=python3.12 scripts/check_core_install.sh     # the interpreter of the fresh venv
#   ARTIFACTS=path/to/run_dir scripts/check_core_install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PYTHON=${PYTHON:-python3}
ART=$(realpath -m "${ARTIFACTS:-artifacts/digits_cnn}")
START=$(date +%s)

fail() { echo "check-core: FAILED: $*" >&2; exit 1; }

if [ ! -f "$ART/qat_int8.tflite" ] || [ ! -f "$ART/reference/expected.json" ]; then
    [ -z "${ARTIFACTS:-}" ] || fail "$ART has no qat_int8.tflite and reference/ (a \`qat run\` directory)"
    echo "check-core: no demo artifacts in $ART: running make demo"
    make demo PYTHON="$PYTHON"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/qat-core-install.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
# Build from a copy of the package sources, so that nothing (build/, *.egg-info) is written
# into the checkout.
mkdir "$TMP/src"
tar -c --exclude=__pycache__ pyproject.toml README.md pipeline android_harness models \
    | tar -x -C "$TMP/src"
"$PYTHON" -m venv "$TMP/venv"
V="$TMP/venv/bin"
echo "check-core: pip install . (no extras) into a fresh venv ($("$V/python" --version))"
if ! "$V/python" -m pip install --quiet --disable-pip-version-check "$TMP/src" \
        > "$TMP/pip.log" 2>&1; then
    cat "$TMP/pip.log" >&2
    fail "pip install . did not succeed"
fi
# what the core install consists of (pip and setuptools come with every venv)
echo "check-core: installed: $("$V/python" -m pip list --format=freeze --disable-pip-version-check \
    | grep -Ev '^(pip|setuptools)==' | tr '\n' ' ')"

# Run outside the checkout with no PYTHONPATH: only the installed package is importable.
cd "$TMP"
unset PYTHONPATH
for mod in tensorflow tf_keras keras tensorflow_model_optimization sklearn; do
    if "$V/python" -c "import $mod" 2>/dev/null; then
        fail "import $mod works in the core install"
    fi
done
echo "check-core: tensorflow, tf_keras, keras, tensorflow_model_optimization, sklearn: not importable"

run() {  # run EXPECTED_EXIT CMD...: one line per command, its output only on a surprise
    local want=$1 code=0
    shift
    "$@" > "$TMP/out" 2> "$TMP/err" || code=$?
    if [ "$code" != "$want" ]; then
        cat "$TMP/out" "$TMP/err" >&2
        fail "exit $code (expected $want): ${*#"$V/"}"
    fi
    echo "check-core: exit $code: ${*#"$V/"}"
}

for variant in float32 ptq_int8 qat_int8; do
    run 0 "$V/qat" inspect "$ART/$variant.tflite"
    run 0 "$V/qat" verify "$ART/$variant.tflite" --reference "$ART"
done
run 0 "$V/qat" inspect "$ART/qat_int8.tflite" --require-full-int8
run 0 "$V/android-harness" host "$ART/float32.tflite" "$ART/qat_int8.tflite" --repeats 1 \
    --min-seconds 0.2 --warmup-seconds 0.1 --cooldown 0 --out "$TMP/harness" -q
[ -f "$TMP/harness/results.json" ] || fail "android-harness host wrote no results.json"

# The training commands: exit 2, the last line names the extra, no traceback.
names_extra() {
    local last
    last=$(tail -n 1 "$TMP/err")
    case "$last" in
        error:*"qat-deploy[qat]"*) ;;
        *) cat "$TMP/err" >&2; fail "qat $1 did not name the qat-deploy[qat] extra" ;;
    esac
    ! grep -q Traceback "$TMP/err" || fail "qat $1 printed a traceback"
    echo "check-core:   $last"
}
run 2 "$V/qat" run digits_cnn --output "$TMP/runs"
names_extra run
run 2 "$V/qat" convert "$ART/keras/qat_model.h5" --data digits --output "$TMP/converted"
names_extra convert
echo "check-core: passed in $(( $(date +%s) - START )) s"
