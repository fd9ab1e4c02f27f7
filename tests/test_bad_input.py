"""Every kind of bad input, through the real command line in a subprocess: exit code 2, one line
on stderr that names the problem (argparse errors may add their usage block), no traceback, and
none of the user's files touched.

Each case runs in its own folder holding just the files it needs. The subprocesses are started
together (as many at a time as there are cores) because most of each run is importing torch.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from conftest import make_model, make_text, run_cli
from tinylm.checkpoint import save_model
from tinylm.tokenizers import CharTokenizer

CORPUS = make_text(3000, seed=3)
TRAIN_TINY = ["--layers", "1", "--embd", "32", "--heads", "2", "--context", "16", "--steps", "1", "--batch-size", "2"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")


@dataclass
class Case:
    id: str
    argv: list[str]
    files: dict[str, str] = field(default_factory=dict)  # name -> kind (see make_file)
    words: list[str] = field(default_factory=list)  # must all appear in the error line
    argparse: bool = False  # an argparse error: a usage block may come before the error line
    marks: tuple = ()


def M(*a):  # the classic interface
    return ["main.py", *a]


def T(*a):  # python -m tinylm
    return list(a)


CORPUS_FILE = {"corpus.txt": "corpus"}
MODEL_FILE = {"tiny.model": "model"}
OVERWRITE = ["already exists", "--force", "-m out.model -o out.model"]

CASES = [
    # ---- datasets
    Case("main-missing-dataset", M("-t", "-c", "-d", "missing.txt", "-o", "out.model"), {}, ["missing.txt", "does not exist"]),
    Case("tinylm-missing-dataset", T("train", *TRAIN_TINY, "-d", "missing.txt", "-o", "out.model"), {}, ["missing.txt", "does not exist"]),
    Case("tinylm-missing-dataset-default-output", T("train", *TRAIN_TINY, "-d", "missing.txt"), {}, ["missing.txt", "does not exist"]),
    Case("main-empty-dataset", M("-t", "-c", "-d", "empty.txt", "-o", "out.model"), {"empty.txt": "empty"}, ["empty.txt", "empty"]),
    Case("tinylm-empty-dataset", T("train", *TRAIN_TINY, "-d", "empty.txt", "-o", "out.model"), {"empty.txt": "empty"}, ["empty.txt", "empty"]),
    Case("main-binary-dataset", M("-t", "-c", "-d", "data.bin", "-o", "out.model"), {"data.bin": "binary"}, ["data.bin", "binary"]),
    Case("tinylm-binary-dataset", T("train", *TRAIN_TINY, "-d", "data.bin", "-o", "out.model"), {"data.bin": "binary"}, ["data.bin", "binary"]),
    Case("main-latin2-dataset", M("-t", "-c", "-d", "pl.txt", "-o", "out.model"), {"pl.txt": "latin2"}, ["pl.txt", "not UTF-8", "iconv"]),
    Case("tinylm-latin2-dataset", T("train", *TRAIN_TINY, "-d", "pl.txt", "-o", "out.model"), {"pl.txt": "latin2"}, ["pl.txt", "not UTF-8", "iconv"]),
    Case("tinylm-eval-latin2-dataset", T("eval", "-m", "tiny.model", "-d", "pl.txt"), {"pl.txt": "latin2", **MODEL_FILE}, ["pl.txt", "not UTF-8"]),
    Case("main-short-dataset", M("-t", "-c", "-d", "short.txt", "-o", "out.model"), {"short.txt": "short"}, ["short.txt", "context + 1"]),
    Case("tinylm-short-dataset", T("train", *TRAIN_TINY, "-d", "short.txt", "-o", "out.model"), {"short.txt": "short"}, ["short.txt", "context + 1"]),
    Case("main-dataset-is-directory", M("-t", "-c", "-d", "texts", "-o", "out.model"), {"texts": "dir"}, ["texts", "directory"]),
    Case("tinylm-dataset-is-directory", T("train", *TRAIN_TINY, "-d", "texts", "-o", "out.model"), {"texts": "dir"}, ["texts", "directory"]),
    # ---- outputs
    Case("main-output-dir-missing", M("-t", "-c", "-d", "corpus.txt", "-o", "nodir/out.model"), CORPUS_FILE, ["nodir", "does not exist"]),
    Case("tinylm-output-dir-missing", T("train", *TRAIN_TINY, "-d", "corpus.txt", "-o", "nodir/out.model"), CORPUS_FILE, ["nodir", "does not exist"]),
    Case("main-output-exists", M("-t", "-c", "-d", "corpus.txt", "-o", "out.model"), {**CORPUS_FILE, "out.model": "model"}, OVERWRITE),
    Case("tinylm-output-exists", T("train", *TRAIN_TINY, "-d", "corpus.txt", "-o", "out.model"), {**CORPUS_FILE, "out.model": "model"}, OVERWRITE),
    # ---- model files
    Case("main-infer-random-bytes-model", M("-i", "-m", "bad.model", "-p", "the"), {"bad.model": "random"}, ["bad.model", "not a usable tinylm model"]),
    Case("tinylm-generate-random-bytes-model", T("generate", "-m", "bad.model", "-p", "the"), {"bad.model": "random"}, ["bad.model", "not a usable tinylm model"]),
    Case("main-infer-text-model", M("-i", "-m", "notes.txt", "-p", "the"), {"notes.txt": "corpus"}, ["notes.txt", "not a usable tinylm model"]),
    Case("tinylm-generate-text-model", T("generate", "-m", "notes.txt", "-p", "the"), {"notes.txt": "corpus"}, ["notes.txt", "not a usable tinylm model"]),
    Case("main-infer-truncated-model", M("-i", "-m", "cut.model", "-p", "the"), {"cut.model": "truncated"}, ["cut.model", "not a usable tinylm model"]),
    Case("tinylm-generate-truncated-model", T("generate", "-m", "cut.model", "-p", "the"), {"cut.model": "truncated"}, ["cut.model", "not a usable tinylm model"]),
    Case("tinylm-eval-truncated-model", T("eval", "-m", "cut.model", "-d", "corpus.txt"), {"cut.model": "truncated", **CORPUS_FILE}, ["cut.model", "not a usable tinylm model"]),
    Case("main-train-from-random-bytes-model", M("-t", "-c", "-m", "bad.model", "-d", "corpus.txt", "-o", "new.model"),
         {"bad.model": "random", **CORPUS_FILE}, ["bad.model", "not a usable tinylm model"]),
    Case("tinylm-generate-missing-model", T("generate", "-m", "missing.model", "-p", "the"), {}, ["missing.model", "does not exist"]),
    Case("tinylm-train-from-model-with-shape-flags", T("train", "-m", "tiny.model", "-d", "corpus.txt", "-o", "new.model", "--layers", "2"),
         {**MODEL_FILE, **CORPUS_FILE}, ["--layers", "-m"]),
    # ---- devices
    Case("main-train-gpu-without-cuda", M("-t", "-g", "-d", "corpus.txt", "-o", "out.model"), CORPUS_FILE, ["CUDA"], marks=(NO_CUDA,)),
    Case("main-infer-gpu-without-cuda", M("-i", "-g", "-m", "tiny.model", "-p", "the"), MODEL_FILE, ["CUDA"], marks=(NO_CUDA,)),
    Case("tinylm-train-cuda-without-cuda", T("train", *TRAIN_TINY, "--device", "cuda", "-d", "corpus.txt", "-o", "out.model"),
         CORPUS_FILE, ["CUDA"], marks=(NO_CUDA,)),
    # ---- inference arguments
    Case("main-infer-without-model", M("-i", "-p", "the"), {}, ["-m MODEL", "-p PROMPT"]),
    Case("main-infer-without-prompt", M("-i", "-m", "tiny.model"), MODEL_FILE, ["-m MODEL", "-p PROMPT"]),
    Case("tinylm-negative-temperature", T("generate", "-m", "tiny.model", "-p", "the", "--temperature", "-1"), MODEL_FILE, ["--temperature", "-1"]),
    Case("tinylm-top-p-zero", T("generate", "-m", "tiny.model", "-p", "the", "--top-p", "0"), MODEL_FILE, ["--top-p", "0"]),
    Case("tinylm-top-p-above-one", T("generate", "-m", "tiny.model", "-p", "the", "--top-p", "1.5"), MODEL_FILE, ["--top-p", "1.5"]),
    Case("tinylm-top-k-negative", T("generate", "-m", "tiny.model", "-p", "the", "--top-k", "-1"), MODEL_FILE, ["--top-k", "-1"]),
    Case("tinylm-beams-zero", T("generate", "-m", "tiny.model", "-p", "the", "--beams", "0"), MODEL_FILE, ["--beams", "0"]),
    Case("tinylm-tokens-zero", T("generate", "-m", "tiny.model", "-p", "the", "--tokens", "0"), MODEL_FILE, ["--tokens", "0"]),
    Case("tinylm-prompt-unknown-char", T("generate", "-m", "tiny.model", "-p", "the €uro"), MODEL_FILE, ["'€'", "--unknown replace"]),
    Case("main-prompt-unknown-char", M("-i", "-m", "tiny.model", "-p", "the €uro"), MODEL_FILE, ["'€'"]),
    Case("tinylm-empty-prompt", T("generate", "-m", "tiny.model", "-p", ""), MODEL_FILE, ["prompt", "empty"]),
    # ---- model shape
    Case("tinylm-zero-layers", T("train", *TRAIN_TINY, "--layers", "0", "-d", "corpus.txt", "-o", "out.model"), CORPUS_FILE, ["--layers", "0"]),
    Case("tinylm-zero-layers-default-output", T("train", *TRAIN_TINY, "--layers", "0", "-d", "corpus.txt"), CORPUS_FILE, ["--layers", "0"]),
    Case("tinylm-heads-do-not-divide-width", T("train", *TRAIN_TINY, "--heads", "3", "-d", "corpus.txt", "-o", "out.model"), CORPUS_FILE,
         ["--heads", "3", "--embd", "32"]),
    Case("tinylm-negative-steps", T("train", *TRAIN_TINY, "--steps", "-5", "-d", "corpus.txt", "-o", "out.model"), CORPUS_FILE, ["--steps", "-5"]),
    # ---- argparse-level errors
    Case("main-no-mode", M("-d", "corpus.txt"), CORPUS_FILE, ["one of the arguments -i/--inference -t/--training is required"], argparse=True),
    Case("main-both-modes", M("-i", "-t"), {}, ["not allowed with argument"], argparse=True),
    Case("main-cpu-and-gpu", M("-t", "-c", "-g", "-d", "corpus.txt"), CORPUS_FILE, ["not allowed with argument"], argparse=True),
    Case("tinylm-top-k-not-a-number", T("generate", "-m", "tiny.model", "-p", "the", "--top-k", "abc"), MODEL_FILE, ["--top-k", "abc"], argparse=True),
    Case("tinylm-unknown-positions", T("train", "--positions", "alibi", "-d", "corpus.txt"), CORPUS_FILE, ["--positions", "alibi"], argparse=True),
    Case("tinylm-generate-without-prompt", T("generate", "-m", "tiny.model"), MODEL_FILE, ["-p/--prompt"], argparse=True),
]


# ---------------------------------------------------------------- the files each case starts with

def model_bytes(folder: Path) -> bytes:
    tok = CharTokenizer.train(CORPUS)
    path = folder / "src.model"
    if not path.exists():
        save_model(path, make_model(seed=0, vocab_size=tok.vocab_size, context_size=16, n_layer=1), tok, {"steps": 0})
    return path.read_bytes()


def make_file(path: Path, kind: str, good_model: bytes) -> None:
    if kind == "dir":
        path.mkdir()
        (path / "a.txt").write_text("inside a folder\n")
        return
    data = {
        "corpus": CORPUS.encode("utf-8"),
        "empty": b"",
        "binary": b"\x7fELF\x02\x01\x01\x00" + bytes(random.Random(0).randrange(256) for _ in range(2000)),
        "latin2": ("Zażółć gęślą jaźń. " * 100).encode("iso-8859-2"),
        "short": CORPUS[:10].encode("utf-8"),
        "model": good_model,
        "random": bytes(random.Random(1).randrange(256) for _ in range(4096)),
        "truncated": good_model[:len(good_model) // 2],
    }[kind]
    path.write_bytes(data)


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder under `folder`: (mtime_ns, sha256) for files, 'dir' for folders."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = "dir"
        for f in files:
            p = Path(root) / f
            out[os.path.relpath(p, folder)] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
    """Run every selected case once, in parallel: case id -> (rc, stdout, stderr, before, after)."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if getattr(item, "originalname", None) == "test_bad_input" and hasattr(item, "callspec")}
    base = tmp_path_factory.mktemp("bad_input")
    good_model = model_bytes(base)
    folders = {}
    for case in CASES:
        if case.id not in selected:
            continue
        d = base / case.id
        d.mkdir()
        for name, kind in case.files.items():
            make_file(d / name, kind, good_model)
        folders[case.id] = (case, d, snapshot(d))

    def run(item):
        case, d, before = item
        rc, out, err = run_cli(case.argv, d, timeout=120)
        return case.id, (rc, out, err, before, snapshot(d))

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        return dict(pool.map(run, folders.values()))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case, outcomes):
    rc, out, err, before, after = outcomes[case.id]
    problems = []  # collected, so one run reports everything wrong with it
    if "Traceback" in err:
        problems.append("a traceback on stderr")
    if rc != 2:
        problems.append(f"exit code {rc}, expected 2")
    lines = [line for line in err.splitlines() if line.strip()]
    if not lines:
        problems.append("nothing on stderr")
    elif case.argparse:
        # argparse prints its usage (one or more lines) and then one error line
        if not lines[0].startswith("usage:") or sum("error:" in line for line in lines) != 1 or "error:" not in lines[-1]:
            problems.append("not an argparse usage block followed by one error line")
    elif len(lines) != 1 or not lines[0].startswith("error: "):
        problems.append(f"{len(lines)} lines on stderr, expected one 'error: ...' line")
    missing = [w for w in case.words if not lines or w not in lines[-1]]
    if missing:
        problems.append(f"the error line does not say {missing}")
    if after != before:
        changed = sorted(set(after) ^ set(before) | {k for k in before if k in after and before[k] != after[k]})
        problems.append(f"the command changed, created or removed {changed}")
    assert not problems, "; ".join(problems) + f"\nstderr:\n{err}"
