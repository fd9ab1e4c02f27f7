"""Streams, resources, special files and start-up: the CLI's side of issue 16 items 8-11.

Every failure here must end as one "error: ..." line on stderr, exit code 2 (130 for Ctrl-C), no
traceback and no file of the user's changed. Cases that need the real process (pipes, /dev/full,
FIFOs, signals, the encoding of stdout) run `python -m tinylm` in a subprocess; the rest call
`cli.main` in-process, which is the command without the seconds of importing torch. docs/bad-input.md lists the same cases.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_command, cli_env, make_model, make_text, run_cli
from tinylm.model.files import save_model
from tinylm.tokenizers import CharTokenizer

CORPUS = make_text(3000, seed=3)
TINY = ["--device", "cpu", "--layers", "1", "--embd", "32", "--heads", "2", "--context", "16", "--batch-size", "2"]
POSIX = pytest.mark.skipif(os.name != "posix", reason="FIFOs, /dev/full and /dev/fd are POSIX")


def TRAIN(*a):
    return ["train", *TINY, "--steps", "1", "-d", "corpus.txt", *a]


def GEN(*a):
    return ["generate", "-m", "tiny.model", "-p", "the", "-n", "5", *a]


# id -> (argv, words the error line must contain); each runs in a folder with corpus.txt and tiny.model
CASES = {
    "tokens-huge": (GEN("-n", "100000000000"), ["--tokens", "at most", "100000000000"]),
    "beams-huge": (GEN("--beams", "10000000"), ["--beams", "at most", "10000000"]),
    "generate-seed-huge": (GEN("--seed", str(10**20)), ["--seed", str(10**20)]),
    "threads-huge": (GEN("--threads", "100000"), ["--threads", "at most", "100000"]),
    "temperature-nan": (GEN("--temperature", "nan"), ["--temperature", "nan", "finite"]),
    "top-p-nan": (GEN("--top-p", "nan"), ["--top-p", "finite"]),
    "train-seed-huge": (TRAIN("--seed", str(10**20), "-o", "out.model"), ["--seed", str(10**20)]),
    "grad-accum-past-epoch": (TRAIN("--grad-accum", "1000", "-o", "out.model"), ["--grad-accum 1000", "more text"]),
    "prompt-not-utf8": (["generate", "-m", "tiny.model", "-p", "a\udcff\udcfe", "-n", "5"], ["-p/--prompt", "not valid UTF-8", "0xfe 0xff"]),
    "stop-not-utf8": (GEN("--stop", "\udc80"), ["--stop", "not valid UTF-8", "0x80"]),
    "no-limit-at-all": (["train", *TINY, "--steps", "0", "--epochs", "0", "--time", "0", "-d", "corpus.txt", "-o", "out.model"],
                        ["--steps", "--epochs", "--time", "never end"]),
    "output-name-255": (TRAIN("-o", "a" * 255), ["255 bytes", "shorter -o"]),
    "output-name-250": (TRAIN("-o", "b" * 244 + ".model"), ["250 bytes", "shorter -o"]),
    "dataset-fifo": (["train", *TINY, "--steps", "1", "-d", "data.fifo", "-o", "out.model"], ["data.fifo", "pipe", "regular file"]),
    "eval-dataset-fifo": (["eval", "-m", "tiny.model", "-d", "data.fifo"], ["data.fifo", "pipe", "regular file"]),
    "model-fifo": (["generate", "-m", "data.fifo", "-p", "the"], ["data.fifo", "not a regular file"]),
    "model-dev-zero": (["generate", "-m", "/dev/zero", "-p", "the"], ["/dev/zero", "not a regular file"]),
    "nul-after-first-mib": (["train", *TINY, "--steps", "1", "-d", "late-nul.txt", "-o", "out.model"], ["late-nul.txt", "binary"]),
    "eval-nul-after-first-mib": (["eval", "-m", "tiny.model", "-d", "late-nul.txt"], ["late-nul.txt", "binary"]),
    "dataset-name-with-newline": (["train", *TINY, "--steps", "1", "-d", "no\nsuch.txt", "-o", "out.model"], ["no\\nsuch.txt", "does not exist"]),
}
AFTER_LOG: set[str] = set()  # cases allowed to log before their error line (none now: each is found before the banner)


def _model_bytes(folder: Path) -> bytes:
    tok = CharTokenizer.train(CORPUS + "é")  # é: output an ASCII stdout cannot encode
    path = folder / "src.model"
    save_model(path, make_model(seed=0, vocab_size=tok.vocab_size, context_size=16, n_layer=1), tok, {"steps": 0})
    return path.read_bytes()


def _snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_fifo():
            out[p.name] = "fifo"
        elif p.is_file():
            out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[p.name] = "dir"
    return out


@pytest.fixture(scope="module")
def folder_factory(tmp_path_factory):
    base = tmp_path_factory.mktemp("streams")
    model = _model_bytes(base)

    def make(name: str) -> Path:
        d = base / name
        d.mkdir()
        (d / "corpus.txt").write_text(CORPUS, encoding="utf-8")
        (d / "tiny.model").write_bytes(model)
        return d

    return make


@POSIX
@pytest.mark.parametrize("cid", list(CASES))
def test_refused_with_one_line(cid, folder_factory, monkeypatch, capsys):
    """In-process `tinylm ...` (cli.main): the same code path as the command, without the start-up."""
    from tinylm.cli import main

    d = folder_factory(cid)
    if "fifo" in cid:
        os.mkfifo(d / "data.fifo")
    if "nul" in cid:
        (d / "late-nul.txt").write_bytes((CORPUS * 400).encode()[:(1 << 20) + 5000] + b"\x00tail\n")
    before = _snapshot(d)
    monkeypatch.chdir(d)
    rc = main(list(CASES[cid][0]))
    err = capsys.readouterr().err
    if cid in AFTER_LOG:
        assert "Traceback" not in err and rc == 2 and err.strip().splitlines()[-1].startswith("error: "), err
        err = err.strip().splitlines()[-1]
    assert_one_line_error(rc, err, CASES[cid][1])
    assert _snapshot(d) == before, "the command changed, created or removed a file"


def assert_one_line_error(rc: int, err: str, words=(), code: int = 2) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert rc == code, f"exit code {rc}, expected {code}\n{err}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert code == 130 or lines[0].startswith("error: "), err
    missing = [w for w in words if w not in lines[0]]
    assert not missing, f"the error line does not say {missing}: {lines[0]}"


# ---- streams -------------------------------------------------------------------------------

def test_cpu_training_past_the_machine_memory_is_refused_up_front(folder_factory, monkeypatch, capsys):
    """Linux may grant an allocation larger than the machine and kill the process later, so the
    settings are checked first (train/memory.py); here the machine is made small instead of the run big."""
    from tinylm.cli import main
    from tinylm.train import memory

    d = folder_factory("cpu-memory")
    (d / "big.txt").write_text(CORPUS * 40, encoding="utf-8")
    monkeypatch.setattr(memory, "machine_memory_bytes", lambda: 64 * 2**20)
    before = _snapshot(d)
    monkeypatch.chdir(d)
    rc = main(["train", "--device", "cpu", "--layers", "1", "--embd", "32", "--heads", "2", "--context", "1024",
               "--batch-size", "100", "--steps", "1", "-d", "big.txt", "-o", "out.model"])
    assert_one_line_error(rc, capsys.readouterr().err, ["--batch-size 100", "--context 1024", "GiB", "0.1 GiB"])
    assert _snapshot(d) == before


def test_batch_size_past_the_text_is_clamped_and_said(folder_factory, capsys):
    d = folder_factory("batch-clamp")
    rc, out, err = run_cli(TRAIN("--batch-size", "100000", "-o", "out.model"), d)
    assert rc == 0, err
    import re

    held = re.search(r"--batch-size 100000 is more than the (\d+) chunks", err)
    assert held, err
    assert f"- batch size: {held.group(1)}" in err, err  # the run's summary reports the batch it trains on


@POSIX
def test_closed_pipe_is_one_line(folder_factory):
    """`tinylm generate ... | head -c 5`: the reader goes away mid-generation."""
    d = folder_factory("pipe")
    proc = subprocess.Popen(cli_command(GEN("-n", "100000")), cwd=d, env=cli_env(d), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert len(proc.stdout.read(5)) == 5
    proc.stdout.close()
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=60)
    assert_one_line_error(rc, err, ["pipe", "closed"])


@POSIX
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_stdout_on_dev_full(folder_factory):
    d = folder_factory("full")
    with open("/dev/full", "w") as full:
        res = subprocess.run(cli_command(GEN()), cwd=d, env=cli_env(d), stdout=full, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, timeout=60)
    assert_one_line_error(res.returncode, res.stderr.decode(), ["No space left", "stdout"])


def test_ascii_stdout_gets_replacement_chars(folder_factory):
    """PYTHONIOENCODING=ascii: a prompt (and text) with é is written with "?", not a crash."""
    d = folder_factory("ascii")
    rc, out, err = run_cli(["generate", "-m", "tiny.model", "-p", "café", "-n", "20", "--seed", "0"], d,
                           env={"PYTHONIOENCODING": "ascii"})
    assert rc == 0 and "Traceback" not in err, err
    assert out.startswith("caf?")


def test_write_out_full_stream_is_usage_error():
    from tinylm.generate.text import write_out
    from tinylm.util.errors import UsageError

    class Full:
        encoding = "utf-8"
        name = "<stdout>"

        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            pass

    with pytest.raises(UsageError, match="No space left"):
        write_out(Full(), "text")


# ---- special files -------------------------------------------------------------------------

@POSIX
def test_process_substitution_dataset_is_refused(folder_factory):
    """`-d <(cat corpus.txt)`: /dev/fd/N is a pipe, read once; it is refused, not called empty."""
    d = folder_factory("procsub")
    r, w = os.pipe()
    os.write(w, CORPUS.encode()[:4000])
    os.close(w)
    try:
        res = subprocess.run(cli_command(["train", *TINY, "--steps", "1", "-d", f"/dev/fd/{r}", "-o", "out.model"]), cwd=d,
                             env=cli_env(d), capture_output=True, pass_fds=(r,), stdin=subprocess.DEVNULL, timeout=60)
    finally:
        os.close(r)
    assert_one_line_error(res.returncode, res.stderr.decode(), [f"/dev/fd/{r}", "pipe", "regular file"])
    assert not (d / "out.model").exists()


# ---- resources -----------------------------------------------------------------------------

@pytest.mark.parametrize("exc", [MemoryError(),
                                 RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                                              "allocate memory: you tried to allocate 800000000024 bytes. Error code 12"), None])
def test_cpu_out_of_memory_is_one_line(exc, capsys):
    from tinylm.cli import run_guarded

    def fails():
        if exc is None:  # numpy's own: an array far larger than any machine's memory
            np.empty(1 << 62, dtype=np.uint8)
        raise exc

    assert run_guarded(fails) == 2
    err = capsys.readouterr().err
    assert_one_line_error(2, err, ["out of memory", "--batch-size"])


def test_other_runtime_errors_keep_their_traceback():
    from tinylm.cli import run_guarded

    def bug():
        raise RuntimeError("a programming error")

    with pytest.raises(RuntimeError, match="programming"):
        run_guarded(bug)


def test_eval_batch_size_beyond_the_text_is_clamped(folder_factory):
    d = folder_factory("eval-batch")
    rc, out, err = run_cli(["eval", "-m", "tiny.model", "-d", "corpus.txt", "--batch-size", "1000000000", "--device", "cpu"], d)
    assert rc == 0 and "Traceback" not in err, err
    assert "perplexity" in out


# ---- start-up and the token cache ----------------------------------------------------------

START_UP_COMMANDS = {  # the three ways in: main.py, `python -m tinylm`, and the `tinylm` script's entry point
    "main.py": cli_command(["main.py", "-i", "-m", "tiny.model", "-p", "the"]),
    "python -m tinylm": cli_command(["generate", "-m", "tiny.model", "-p", "the", "-n", "5", "--device", "cpu"]),
    "tinylm script": [sys.executable, "-c", "import sys; from tinylm.launch import main; sys.exit(main())",
                      "generate", "-m", "tiny.model", "-p", "the", "-n", "5", "--device", "cpu"],
}


@POSIX
@pytest.mark.parametrize("way", sorted(START_UP_COMMANDS))
def test_ctrl_c_during_start_up(folder_factory, way):
    """SIGINT while Python is still importing torch: exit 130 with one line. (`import tinylm`
    imports nothing heavy, so the guards in main.py and tinylm/launch.py see the signal.)"""
    d = folder_factory("sigint-" + way.replace(" ", "-"))
    proc = subprocess.Popen(START_UP_COMMANDS[way], cwd=d, env=cli_env(d), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    time.sleep(0.4)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal came")
    assert_one_line_error(proc.returncode, err.decode(), ["interrupted"], code=130)


def test_corrupted_token_cache_is_rebuilt(tmp_path, monkeypatch, messages):
    from tinylm.data import tokenfile

    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "t.txt"
    text.write_text(CORPUS, encoding="utf-8")
    tok = CharTokenizer.train(CORPUS)
    info = tokenfile.scan_text(text)
    good = np.array(tokenfile.token_file(text, tok, info, progress=False))
    bin_path = next((tmp_path / "cache" / "tokens").glob("*.bin"))
    damaged = good.copy()
    damaged[100] = tok.vocab_size + 7  # an id past the vocabulary: IndexError in the embedding
    bin_path.write_bytes(damaged.astype(tokenfile.id_dtype(tok.vocab_size)).tobytes())
    again = tokenfile.token_file(text, tok, info, progress=False)
    assert np.array_equal(np.array(again), good)
    assert any("past the vocabulary" in m for m in messages)


def test_nul_after_first_mib_in_memory_reader(tmp_path):
    from tinylm.data.batches import read_text
    from tinylm.util.errors import UsageError

    p = tmp_path / "late.txt"
    p.write_bytes(b"a" * ((1 << 20) + 10) + b"\x00")
    with pytest.raises(UsageError, match="binary"):
        read_text(p)


def test_cache_write_failure_names_its_reason(tmp_path, monkeypatch):
    """An OSError without errno (numpy's tofile on a full disk raises one) must not print "(None)"."""
    from tinylm.data import tokenfile
    from tinylm.util.errors import UsageError

    def full(*a, **kw):
        raise OSError("5 requested and 0 written")
        yield  # noqa: unreachable - a generator, like the real one

    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tokenfile, "_encode_blocks", full)
    text = tmp_path / "t.txt"
    text.write_text(CORPUS, encoding="utf-8")
    with pytest.raises(UsageError, match=r"\(5 requested and 0 written\); free some disk space") as e:
        tokenfile.token_file(text, CharTokenizer.train(CORPUS), progress=False)
    assert "(None)" not in str(e.value)


def test_tokenizer_train_on_a_full_disk_keeps_the_old_file(folder_factory, monkeypatch, capsys):
    """The disk fills while the trained tokenizer is written: one line, the previous file intact,
    no temp file left (the write goes through util/files.atomic_write_bytes)."""
    import errno

    from tinylm.cli import main
    from tinylm.util import files

    d = folder_factory("tok-full-disk")
    (d / "tok.json").write_text("an earlier tokenizer", encoding="utf-8")
    before = _snapshot(d)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    monkeypatch.chdir(d)
    rc = main(["tokenizer", "train", "-d", "corpus.txt", "-o", "tok.json", "--vocab-size", "300", "--force"])
    assert_one_line_error(rc, capsys.readouterr().err, ["tok.json", "No space left", "free some disk space"])
    assert _snapshot(d) == before, "the old tokenizer changed or a temp file was left"


def test_cache_variable_naming_a_file_is_one_line(folder_factory, monkeypatch, capsys):
    from tinylm.cli import main

    d = folder_factory("cache-is-a-file")
    monkeypatch.setenv("TINYLM_CACHE", str(d / "corpus.txt"))
    before = _snapshot(d)
    monkeypatch.chdir(d)
    rc = main(TRAIN("-o", "out.model"))
    assert_one_line_error(rc, capsys.readouterr().err, ["TINYLM_CACHE=", "is a file, not a folder"])
    assert _snapshot(d) == before
