#!/usr/bin/env bash
# Create (or bring up to date) the project's virtual environment:
#   torch/torchvision, the runtime packages at the versions in
#   requirements/constraints.txt, Detectron2 v0.6 (tools/build_detectron2.py;
#   rebuilt when an earlier project build lacks today's source patches, skipped
#   when the environment imports a Detectron2 built some other way, e.g. a GPU
#   build from git), panopticapi, pytest, and updetr_d2 itself (editable).
#
# Idempotent: a stamp holding the hash of every input is written on success, and
# a second run with the same inputs returns at once.
#
#   VENV=path   where the environment lives (default: .venv in the repository)
#   PYTHON=exe  the interpreter that creates it (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.updetr_d2-installed"

cd "$ROOT"
inputs_hash="$(cat requirements/*.txt tools/install_env.sh tools/build_detectron2.py setup.py \
  | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$inputs_hash" ]]; then
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[install] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

echo "[install] runtime packages (torch first run: ~1-2 min)"
pip_install -c requirements/constraints.txt -r requirements/runtime.txt -r requirements/test.txt

# missing | outdated (a project build of an older patch level) | current | foreign
d2_state="$("$PY" tools/build_detectron2.py --state)"
if [[ "$d2_state" == "foreign" ]] && ! "$PY" -c "import detectron2" 2>/dev/null; then
  d2_state=missing  # found on the path but does not import: install ours
fi
case "$d2_state" in
  current|foreign)
    echo "[install] using the Detectron2 already installed ($d2_state): $("$PY" -c 'import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))')"
    ;;
  *)
    echo "[install] Detectron2 v0.6 from the hash-pinned PyPI sdist, patched, no C++ build ($d2_state before)"
    "$PY" tools/build_detectron2.py
    ;;
esac

if ! "$PY" -c "import panopticapi" 2>/dev/null; then
  # --no-deps: it declares numpy<2, which its evaluation code does not need.
  pip_install --no-deps -c requirements/constraints.txt panopticapi-lite
fi

echo "[install] updetr_d2 (editable)"
pip_install --no-deps --no-build-isolation -e .

"$PY" -c "import updetr_d2, detectron2; print('[install] ok: updetr_d2', updetr_d2.__version__, '| detectron2', detectron2.__version__)"
echo "$inputs_hash" > "$STAMP"
