#!/usr/bin/env bash
# The Python package's tests (part of the README's test command): builds the extension with
# maturin into a virtual environment under ../target/pyenv (created, and given maturin, numpy,
# pytest, dask, distributed and pandas from PyPI, on first use), then runs pytest. Needs the CLI
# built first (`cargo test --release` builds it): the tests mix partials with it.
set -euo pipefail
cd "$(dirname "$0")"
venv=../target/pyenv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  "maturin>=1.5,<2" numpy pytest "dask[array,dataframe]" distributed pandas
VIRTUAL_ENV="$(cd "$venv" && pwd)" PATH="$(cd "$venv" && pwd)/bin:$PATH" \
  maturin develop --release --locked --target-dir ../target
"$venv/bin/python" -m pytest -q tests "$@"
