"""Bad input to `tinylm serve`, through the real command line in a subprocess (as in
tests/test_bad_input.py): exit code 2, one line on stderr naming the problem and the fix, no
traceback, the user's files unchanged. docs/bad-input.md lists the same cases.
"""

from __future__ import annotations

import hashlib
import importlib.util
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import run_cli

pytest.importorskip("uvicorn")
NO_LORA = importlib.util.find_spec("tinylm.lora") is None

CASES = [  # (extra args, text the one line must hold): through a subprocess
    (["-m", "missing.model"], "model file missing.model does not exist"),
    (["--port", "{busy}"], "cannot listen on 127.0.0.1 port {busy}"),
]
RANGES = [  # checked before anything is loaded: in-process (cli.main), to keep the file fast
    (["--port", "70000"], "--port must be from 0 to 65535, got 70000"),
    (["--slots", "1000"], "--slots must be from 0 (auto) to 256, got 1000"),
    (["--max-tokens", "0"], "--max-tokens must be from 1 to 100,000, got 0"),
    (["--max-body", "10"], "--max-body must be at least 1024 bytes, got 10"),
    (["--queue", "-1"], "--queue must be >= 0, got -1"),
    (["--prefill-rows", "-2"], "--prefill-rows must be from 0 (auto) to 256, got -2"),
    (["--api-key", " "], "--api-key is empty"),
]
if NO_LORA:
    CASES.append((["--adapter", "a.lora"], "adapters need tinylm.lora"))


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_bad_serve_input(model_file):
    folder = model_file.parent
    before = _digest(folder)
    with socket.socket() as busy:  # 0.0.0.0: taken for 127.0.0.1 too
        busy.bind(("0.0.0.0", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        runs = [["serve", "-m", model_file.name, "--port", "0"] + [a.replace("{busy}", port) for a in args]
                for args, _ in CASES]
        # another host: a warning line first; the taken port then ends the run
        runs.append(["serve", "-m", model_file.name, "--host", "0.0.0.0", "--port", port])
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda a: run_cli(a, folder, timeout=120), runs))
    rc, _, err = results.pop()
    lines = err.strip().splitlines()
    assert rc == 2 and lines[0].startswith("warning: --host 0.0.0.0 makes the server reachable from other machines")
    assert "--api-key" in lines[0] and lines[1].startswith("error: cannot listen on 0.0.0.0"), err
    for (args, want), (rc, out, err) in zip(CASES, results):
        want = want.replace("{busy}", port)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and want in lines[0] and lines[0].startswith("error: "), (args, rc, err)
        assert "Traceback" not in err
    assert _digest(folder) == before


def test_missing_extra_names_it(monkeypatch):
    """Without uvicorn (or starlette) the command names the extra to install, before loading anything."""
    import argparse
    import sys

    from tinylm.serve.command import check_args
    from tinylm.util.errors import UsageError

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` now raises ImportError
    args = argparse.Namespace(port=0, slots=0, prefill_rows=0, queue=1, max_tokens=10, max_body=4096, threads=0, api_key=None)
    with pytest.raises(UsageError, match=r"pip install 'tinylm\[serve\]'"):
        check_args(args)


@pytest.mark.parametrize("args, want", RANGES, ids=[a[0] for a, _ in RANGES])
def test_bad_serve_numbers(model_file, capsys, args, want):
    from tinylm.cli import main

    before = _digest(model_file.parent)
    assert main(["serve", "-m", str(model_file), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], lines
    assert _digest(model_file.parent) == before
