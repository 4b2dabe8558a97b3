#!/usr/bin/env bash
# The long fuzzing run of the readers (issue 21): IMIS_FUZZ_EXAMPLES cases per format (default 10000).
#
#   [JOBS=2] [ONLY=regex] [FRESH=1] [NICE=15] bash scripts/fuzz_long.sh [OUT]   (OUT defaults to runs/fuzz-long)
#
# Each fuzz test runs in its own pytest process at nice 19 (NICE sets it), so that a reader that kills its process
# (a segmentation fault in a C library) stops only its own format. OUT/status.txt has each test's exit
# status, OUT/<test>.log its output, OUT/<test>.json its cases and seconds per format (rewritten every
# 250 cases, so that a stopped test keeps its count), OUT/counts.json their sum. JOBS tests run at once
# (default 1); ONLY keeps the test ids matching an extended regex (ONLY='mha|nii'). The run resumes: a
# test with a passing line in OUT/status.txt is not run again (FRESH=1 starts over). The default
# `pytest` run is the short version of the same tests (40 cases per format).
set -uo pipefail
cd "$(dirname "$0")/.."
N=${IMIS_FUZZ_EXAMPLES:-10000}
OUT=${1:-runs/fuzz-long}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
mkdir -p "$OUT/tmp"
[ "${FRESH:-0}" = 1 ] && rm -f "$OUT"/*.json "$OUT"/*.log "$OUT/status.txt"
touch "$OUT/status.txt"
ids=$(PYTHONPATH=src $PY -m pytest --collect-only -q -m fuzz tests/fuzz 2>/dev/null | grep '::' \
  | grep -E -- "${ONLY:-.}")
run_one() {
  local id=$1 name start
  name=$(printf '%s' "${id#tests/fuzz/}" | tr -c 'A-Za-z0-9_.-' '_')
  start=$(date +%s)
  IMIS_FUZZ_EXAMPLES=$N IMIS_FUZZ_REPORT="$OUT/$name.json" PYTHONPATH=src \
    nice -n "${NICE:-19}" $PY -m pytest -q -p no:cacheprovider --basetemp="$OUT/tmp/$name" "$id" > "$OUT/$name.log" 2>&1
  echo "$? $(( $(date +%s) - start ))s $id" | tee -a "$OUT/status.txt"
}
for id in $ids; do  # JOBS tests at a time (default 1)
  if grep -qxF -- "$id" <(awk '$1 == 0 {print $3}' "$OUT/status.txt"); then
    echo "passed before, skipped: $id"
    continue
  fi
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-1}" ]; do wait -n; done
  run_one "$id" &
done
wait
$PY - "$OUT" <<'PYEOF'
import json, sys
from collections import Counter
from pathlib import Path
out = Path(sys.argv[1]); cases, secs, done = Counter(), Counter(), {}
for f in sorted(out.glob("*.json")):
    if f.name == "counts.json":
        continue
    for fmt, row in json.loads(f.read_text()).items():
        cases[fmt] += row["cases"]; secs[fmt] += row["seconds"]
        done[fmt] = done.get(fmt, True) and row.get("finished", True)
report = {fmt: {"cases": cases[fmt], "seconds": round(secs[fmt], 1), "finished": done[fmt]} for fmt in sorted(cases)}
(out / "counts.json").write_text(json.dumps(report, indent=2) + "\n")
for fmt, row in report.items():
    note = "" if row["finished"] else "  (stopped: interim count)"
    print(f"{fmt:32s} {row['cases']:7d} cases {row['seconds']:8.1f} s{note}")
PYEOF
