#!/usr/bin/env bash
# The README quickstart's training command run as a user runs it, recording what they see:
# stdout + stderr as one log (not a terminal, so plain text) in
# benchmarks/results/quickstart/transcript.txt, the run's metrics.jsonl and config.json beside it,
# and the wall time (printed, and in wall_time.json). Needs the prepared data/emoji.
#
#   benchmarks/quickstart_transcript.sh        (from anywhere; PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
out=benchmarks/results/quickstart
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
workdir=$tmp/quickstart
command=(python -m diva_tf.train --flagfile=configs/quickstart.flags "--workdir=$workdir")

mkdir -p "$out"
echo "\$ ${command[*]}" > "$out/transcript.txt"
start=$(date +%s%N)
status=0
# A user's shell does not set TF_CPP_MIN_LOG_LEVEL (the test environment may).
env -u TF_CPP_MIN_LOG_LEVEL "$python" "${command[@]:1}" >> "$out/transcript.txt" 2>&1 || status=$?
tenths=$((($(date +%s%N) - start) / 100000000))
seconds=$((tenths / 10)).$((tenths % 10))
for f in metrics.jsonl config.json; do
    if [ -f "$workdir/$f" ]; then cp "$workdir/$f" "$out/"; fi
done
printf '{"seconds": %s, "cpus": %d, "exit_code": %d}\n' "$seconds" "$(nproc)" "$status" \
    > "$out/wall_time.json"
echo "wall time: $seconds s (exit code $status, $(nproc) CPUs); transcript: $out/transcript.txt"
exit "$status"
