"""Files a run must never touch, through the real command line in a subprocess: an output (the
model, its `.last` sibling, the checkpoint folder) that exists without --force, or that is an input
of the same run under any flag (also through a hard or symbolic link); two runs on one output;
a run that ends with nothing to save; temp files a killed save left; a damaged newest checkpoint.

A refusal is exit code 2, one `error:` line on stderr, no traceback, and every file that was there
before byte-identical after (sha256), with nothing new left behind (the lock file included).
docs/bad-input.md lists the same cases.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import cli_command, cli_env, make_model, make_text, run_cli
from tinylm.model.files import save_model
from tinylm.tokenizers import CharTokenizer

CORPUS = make_text(3000, seed=3)
TINY = ["--device", "cpu", "--layers", "1", "--embd", "32", "--heads", "2", "--context", "16", "--batch-size", "2"]
HAS_SYS = pytest.mark.skipif(not sys.platform.startswith("linux") or os.access("/sys", os.W_OK | os.X_OK) and os.geteuid() != 0,
                             reason="needs Linux's read-only /sys")
DEAD_PID = 99_999_999  # above any pid_max: no process can have it


@dataclass
class Case:
    id: str
    argv: list[str]
    files: dict[str, str] = field(default_factory=dict)  # name -> "corpus", "notes", "model", or "link:NAME" / "symlink:NAME"
    words: list[str] = field(default_factory=list)  # must all appear in the error line
    marks: tuple = ()


def TRAIN(*a):
    return ["train", *TINY, "--steps", "1", *a]


CORPUS_FILE = {"corpus.txt": "corpus"}
NO_INPUT = "no flag lets an output replace an input"
CASES = [
    Case("last-sibling-exists", TRAIN("-d", "corpus.txt", "-o", "out.model"), {**CORPUS_FILE, "out.last.model": "notes"},
         ["out.last.model", "already exists", "--force"]),
    Case("last-sibling-is-the-dataset", TRAIN("-d", "book.last.txt", "-o", "book.txt", "--force"), {"book.last.txt": "corpus"},
         ["book.last.txt", "the dataset", NO_INPUT]),
    Case("main-last-sibling-is-the-dataset", ["main.py", "-t", "-c", "-d", "book.last.txt", "-o", "book.txt"],
         {"book.last.txt": "corpus"}, ["book.last.txt", "the dataset", NO_INPUT]),
    Case("output-is-the-dataset-force", TRAIN("-d", "c.txt", "-o", "c.txt", "--force"), {"c.txt": "corpus"},
         ["c.txt", "the dataset", NO_INPUT]),
    Case("output-hard-link-to-dataset-force", TRAIN("-d", "corpus.txt", "-o", "hard.model", "--force"),
         {**CORPUS_FILE, "hard.model": "link:corpus.txt"}, ["hard.model", "the dataset", NO_INPUT]),
    Case("output-symlink-to-dataset-force", TRAIN("-d", "corpus.txt", "-o", "sym.model", "--force"),
         {**CORPUS_FILE, "sym.model": "symlink:corpus.txt"}, ["sym.model", "the dataset", NO_INPUT]),
    Case("last-sibling-is-the-base-model", ["train", "--steps", "1", "--device", "cpu", "-m", "out.last.model", "-d", "corpus.txt",
                                            "-o", "out.model", "--force"],
         {**CORPUS_FILE, "out.last.model": "model"}, ["out.last.model", "the model", NO_INPUT]),
    Case("output-is-the-resume-checkpoint", TRAIN("--resume", "run.ckpt", "-d", "corpus.txt", "-o", "run.ckpt", "--force"),
         {**CORPUS_FILE, "run.ckpt": "notes"}, ["run.ckpt", "the checkpoint", NO_INPUT]),
    Case("dataset-inside-checkpoint-folder", TRAIN("-d", "out.model.ckpt/corpus.txt", "-o", "out.model", "--force"),
         {"out.model.ckpt/corpus.txt": "corpus"}, ["out.model.ckpt", "the dataset", "checkpoints"]),
    Case("tokenizer-output-is-the-dataset-force", ["tokenizer", "train", "--vocab-size", "300", "-d", "corpus.txt", "-o", "corpus.txt",
                                                   "--force"], CORPUS_FILE, ["corpus.txt", "the dataset", NO_INPUT]),
    Case("tokenizer-output-hard-link-to-dataset-force", ["tokenizer", "train", "--vocab-size", "300", "-d", "corpus.txt", "-o",
                                                         "tok.json", "--force"],
         {**CORPUS_FILE, "tok.json": "link:corpus.txt"}, ["tok.json", "the dataset", NO_INPUT]),
    Case("tokenizer-output-folder-not-writable", ["tokenizer", "train", "--vocab-size", "300", "-d", "corpus.txt", "-o", "/sys/tok.json"],
         CORPUS_FILE, ["/sys", "not writable"], marks=(HAS_SYS,)),
]


def make_files(folder: Path, files: dict[str, str]) -> None:
    for name, kind in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind.startswith("link:"):
            os.link(folder / kind[5:], path)
        elif kind.startswith("symlink:"):
            path.symlink_to(kind[8:])
        elif kind == "model":
            tok = CharTokenizer.train(CORPUS)
            save_model(path, make_model(seed=0, vocab_size=tok.vocab_size, context_size=16, n_layer=1), tok, {"steps": 0})
        else:
            path.write_text(CORPUS if kind == "corpus" else "my notes\n", encoding="utf-8")


def snapshot(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file under `folder` (tinylm's own token cache left out)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith((".tinylm-cache", ".xdg-cache"))]
        for f in files:
            p = Path(root) / f
            out[os.path.relpath(p, folder)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case run once, two at a time: case id -> (rc, stderr, before, after)."""
    base = tmp_path_factory.mktemp("outputs")
    todo = []
    for case in CASES:
        if any(m.name == "skipif" and m.args and m.args[0] for m in case.marks):
            continue
        d = base / case.id
        d.mkdir()
        make_files(d, case.files)
        todo.append((case, d, snapshot(d)))

    def run(item):
        case, d, before = item
        rc, _, err = run_cli(case.argv, d, timeout=120)
        return case.id, (rc, err, before, snapshot(d))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, todo))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_refused(case, outcomes):
    rc, err, before, after = outcomes[case.id]
    assert rc == 2, err
    line = one_error_line(err)
    assert all(w in line for w in case.words), (case.words, line)
    assert after == before, "files changed, created or removed"


def test_no_model_to_save_is_an_error(tmp_path):
    """--lr inf: every step is skipped and the weights turn NaN, so nothing can be saved; the run
    must say so and fail, never log a save that did not happen. (The training log is on stderr
    too, so the check is: one error line, and it is the last.)"""
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    before = snapshot(tmp_path)
    rc, _, err = run_cli(["train", *TINY, "--steps", "3", "--lr", "inf", "-d", "corpus.txt", "-o", "inf.model"], tmp_path)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and "Traceback" not in err, err
    assert sum(line.startswith("error:") for line in lines) == 1 and lines[-1].startswith("error: "), err
    assert "inf.model was not written" in lines[-1] and "--lr" in lines[-1]
    assert "Saved the model" not in err
    assert not (tmp_path / "inf.model").exists() and not (tmp_path / "inf.last.model").exists()
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before


def test_second_run_on_one_output_is_refused(tmp_path):
    """Two runs, one -o: the second (even with --force) stops at once naming the first's pid; the
    first finishes and saves; the lock file goes with it."""
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    first = subprocess.Popen(cli_command(["train", *TINY, "--time", "5", "-d", "corpus.txt", "-o", "same.model"]), cwd=tmp_path,
                             env=cli_env(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    lock = tmp_path / ".same.model.lock"
    deadline = time.time() + 60
    while not (lock.exists() and lock.read_text().strip()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert lock.exists(), "the first run never took the lock"
        rc, _, err = run_cli(["train", *TINY, "--steps", "1", "--force", "-d", "corpus.txt", "-o", "same.model"], tmp_path)
        assert rc == 2, err
        line = one_error_line(err)
        assert f"process {first.pid}" in line and "same.model" in line, line
    finally:
        _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert "Saved the model to same.model" in first_err
    assert (tmp_path / "same.model").is_file() and not lock.exists()


def test_stale_temp_files_removed_live_ones_kept(tmp_path):
    """A save killed mid-write leaves .NAME.tmp<pid>: the next run on that output removes those of
    dead processes, beside the outputs and in the checkpoint folder, and leaves a live one's."""
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    (tmp_path / "out.model.ckpt").mkdir()
    dead = [tmp_path / f".out.model.tmp{DEAD_PID}", tmp_path / f".out.last.model.tmp{DEAD_PID}",
            tmp_path / "out.model.ckpt" / f".step-00000007.ckpt.tmp{DEAD_PID}"]
    live = tmp_path / f".out.model.tmp{os.getpid()}"  # this test's own process: alive
    other = tmp_path / f".notes.txt.tmp{DEAD_PID}"  # not a file of this output: not ours to remove
    for p in [*dead, live, other]:
        p.write_bytes(b"partial")
    rc, _, err = run_cli(["train", *TINY, "--steps", "1", "-d", "corpus.txt", "-o", "out.model"], tmp_path)
    assert rc == 0, err
    assert not any(p.exists() for p in dead), err
    assert live.exists() and other.exists()
    assert f"Removed .out.model.tmp{DEAD_PID}" in err


def test_damaged_newest_checkpoint_skipped_with_warning(tmp_path):
    """--resume with a truncated newest checkpoint: the older one is resumed, and a warning names
    the damaged file and why."""
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    argv = ["train", *TINY, "--steps", "2", "--checkpoint-every", "1", "-d", "corpus.txt", "-o", "out.model"]
    rc, _, err = run_cli(argv, tmp_path)
    assert rc == 0, err
    newest = tmp_path / "out.model.ckpt" / "step-00000002.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])
    rc, _, err = run_cli([*argv, "--resume"], tmp_path)
    assert rc == 0 and "Traceback" not in err, err
    warning = next((line for line in err.splitlines() if "WARNING" in line and "step-00000002.ckpt" in line), None)
    assert warning is not None and "damaged" in warning and "step-00000001.ckpt" in warning, err
