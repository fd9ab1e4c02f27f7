"""Every kind of bad input, through the real command line in a subprocess: exit code 2, one line
on stderr that names the problem (argparse errors may add their usage block), no traceback, and
none of the user's files touched. docs/bad-input.md lists the same cases with their messages.

Each case runs in its own folder holding just the files it needs. The subprocesses are started
together (as many at a time as there are cores) because most of each run is importing torch.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import shutil
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from conftest import make_model, make_text, run_cli
from tinylm.model.files import save_model
from tinylm.tokenizers import CharTokenizer

CORPUS = make_text(3000, seed=3)
TRAIN_TINY = ["--layers", "1", "--embd", "32", "--heads", "2", "--context", "16", "--steps", "1", "--batch-size", "2"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
NOT_ROOT = pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read anything")
HAS_SYS = pytest.mark.skipif(not sys.platform.startswith("linux") or os.access("/sys", os.W_OK | os.X_OK) and os.geteuid() != 0,
                             reason="needs Linux's read-only /sys")
MARKER = "PWNED"  # what the hostile pickles below would create if loading them ran their code


class Hostile:
    """Unpickling this calls open(MARKER, "w"): a stand-in for any code a crafted file could run."""

    def __reduce__(self):
        return (open, (MARKER, "w"))


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
RUN = {"out.model": "run-model", "out.model.ckpt": "run-ckpts"}  # a finished `train *TRAIN_TINY -o out.model`
RESUME = ["train", *TRAIN_TINY, "--resume", "-d", "corpus.txt", "-o", "out.model"]


def NUM(flag: str, value: str, *words: str, cmd: str = "train") -> "Case":
    """A numeric flag out of range; the error must name the flag and the value given."""
    if cmd.startswith("train"):
        bpe = ["--tokenizer", "bpe"] if cmd == "train-bpe" else []
        argv, files = T("train", *TRAIN_TINY, *bpe, flag, value, "-d", "corpus.txt", "-o", "out.model"), CORPUS_FILE
    elif cmd == "tokenizer":
        argv, files = T("tokenizer", "train", flag, value, "-d", "corpus.txt", "-o", "tok.json"), CORPUS_FILE
    elif cmd == "eval":
        argv, files = T("eval", "-m", "tiny.model", "-d", "corpus.txt", flag, value), {**MODEL_FILE, **CORPUS_FILE}
    else:
        argv, files = T(cmd, "-m", "tiny.model", "-p", "the", flag, value), MODEL_FILE
    return Case(f"{cmd}{flag}={value}", argv, files, list(words or (flag, value)))
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
    Case("main-unreadable-dataset", M("-t", "-c", "-d", "secret.txt", "-o", "out.model"), {"secret.txt": "unreadable"},
         ["secret.txt", "permission denied"], marks=(NOT_ROOT,)),
    Case("tinylm-unreadable-dataset", T("train", *TRAIN_TINY, "-d", "secret.txt", "-o", "out.model"), {"secret.txt": "unreadable"},
         ["secret.txt", "permission denied"], marks=(NOT_ROOT,)),
    Case("tinylm-bpe-vocab-larger-than-text", T("train", *TRAIN_TINY, "--tokenizer", "bpe", "--vocab-size", "5000", "-d", "short.txt",
                                                "-o", "out.model"), {"short.txt": "short"}, ["too small", "--vocab-size"]),
    # ---- outputs
    Case("main-output-dir-missing", M("-t", "-c", "-d", "corpus.txt", "-o", "nodir/out.model"), CORPUS_FILE, ["nodir", "does not exist"]),
    Case("tinylm-output-dir-missing", T("train", *TRAIN_TINY, "-d", "corpus.txt", "-o", "nodir/out.model"), CORPUS_FILE, ["nodir", "does not exist"]),
    Case("main-output-exists", M("-t", "-c", "-d", "corpus.txt", "-o", "out.model"), {**CORPUS_FILE, "out.model": "model"}, OVERWRITE),
    Case("tinylm-output-exists", T("train", *TRAIN_TINY, "-d", "corpus.txt", "-o", "out.model"), {**CORPUS_FILE, "out.model": "model"}, OVERWRITE),
    Case("main-output-is-directory", M("-t", "-c", "-d", "corpus.txt", "-o", "texts"), {**CORPUS_FILE, "texts": "dir"}, ["texts", "is a directory"]),
    Case("tinylm-output-is-directory", T("train", *TRAIN_TINY, "-d", "corpus.txt", "-o", "texts"), {**CORPUS_FILE, "texts": "dir"},
         ["texts", "is a directory"]),
    Case("tinylm-output-folder-is-a-file", T("train", *TRAIN_TINY, "-d", "corpus.txt", "-o", "corpus.txt/out.model"), CORPUS_FILE,
         ["corpus.txt", "is a file"]),
    Case("tinylm-output-folder-not-writable", T("train", *TRAIN_TINY, "-d", "corpus.txt", "-o", "/sys/out.model"), CORPUS_FILE,
         ["/sys", "not writable"], marks=(HAS_SYS,)),
    Case("tinylm-checkpoint-folder-is-a-file", T("train", *TRAIN_TINY, "-d", "corpus.txt", "-o", "out.model"),
         {**CORPUS_FILE, "out.model.ckpt": "corpus"}, ["out.model.ckpt", "is a file"]),
    Case("tinylm-tokenizer-output-exists", T("tokenizer", "train", "-d", "corpus.txt", "-o", "tok.json"), {**CORPUS_FILE, "tok.json": "corpus"},
         ["tok.json", "already exists"]),
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
    Case("tinylm-generate-model-is-directory", T("generate", "-m", "texts", "-p", "the"), {"texts": "dir"}, ["texts", "is a directory"]),
    Case("tinylm-generate-foreign-safetensors", T("generate", "-m", "other.safetensors", "-p", "the"), {"other.safetensors": "foreign"},
         ["other.safetensors", "tinylm-model-1"]),
    Case("main-infer-hostile-pickle-model", M("-i", "-m", "evil.model", "-p", "the"), {"evil.model": "hostile-torch"},
         ["evil.model", "not a usable tinylm model"]),
    Case("tinylm-generate-hostile-pickle-model", T("generate", "-m", "evil.model", "-p", "the"), {"evil.model": "hostile-pickle"},
         ["evil.model", "not a usable tinylm model"]),
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
    # ---- every other numeric flag out of range
    NUM("--epochs", "-1"), NUM("--time", "-1", "--time", "-1.0"), NUM("--batch-size", "0"), NUM("--grad-accum", "0"),
    NUM("--lr", "0", "--lr", "0.0"), NUM("--min-lr", "1", "--min-lr", "1.0"), NUM("--warmup", "-1"), NUM("--patience", "-1"),
    NUM("--beta1", "1", "--beta1", "1.0"), NUM("--beta2", "1.5", "--beta2", "1.5"), NUM("--weight-decay", "-1", "--weight-decay", "-1.0"),
    NUM("--grad-clip", "-1", "--grad-clip", "-1.0"), NUM("--ema", "1", "--ema", "1.0"), NUM("--eval-interval", "-1"), NUM("--val-fraction", "1", "--val-fraction", "1.0"),
    NUM("--log-interval", "0"), NUM("--checkpoint-every", "-1"), NUM("--checkpoint-minutes", "-1", "--checkpoint-minutes", "-1.0"),
    NUM("--keep-checkpoints", "0"), NUM("--heads", "0"), NUM("--embd", "0"), NUM("--context", "0"), NUM("--ff", "-1"),
    NUM("--dropout", "1", "--dropout", "1.0"), NUM("--softcap", "-1", "--softcap", "-1.0"), NUM("--vocab-size", "10", "--vocab-size", "10", "260", cmd="train-bpe"),
    NUM("--repetition-penalty", "0", "--repetition-penalty", "0.0", cmd="generate"), NUM("--num-samples", "0", cmd="generate"),
    NUM("--threads", "-1", cmd="generate"), NUM("--batch-size", "0", cmd="eval"), NUM("--vocab-size", "5", cmd="tokenizer"),
    # ---- conflicting flags
    Case("tinylm-cuda-graph-and-muon", T("train", *TRAIN_TINY, "--cuda-graph", "--optimizer", "muon", "-d", "corpus.txt", "-o", "out.model"),
         CORPUS_FILE, ["--cuda-graph", "adamw"]),
    Case("tinylm-cuda-graph-on-cpu", T("train", *TRAIN_TINY, "--cuda-graph", "--device", "cpu", "-d", "corpus.txt", "-o", "out.model"),
         CORPUS_FILE, ["--cuda-graph", "CUDA"]),
    Case("tinylm-decode-graph-on-cpu", T("generate", "-m", "tiny.model", "-p", "the", "--device", "cpu", "--decode", "graph"),
         MODEL_FILE, ["--decode graph", "CUDA", "eager"]),
    Case("tinylm-fp16-weights-compiled", T("generate", "-m", "tiny.model", "-p", "the", "--device", "cpu", "--weights", "fp16",
                                            "--decode", "compile"),
         MODEL_FILE, ["--decode compile", "--weights fp16", "--decode eager", "--weights int8"]),
    Case("tinylm-cpu-weights-on-cuda", T("generate", "-m", "tiny.model", "-p", "the", "--device", "cuda", "--weights", "int8"),
         MODEL_FILE, ["--weights int8", "CPU", "--device cpu"], marks=(NEEDS_CUDA,)),
    Case("tinylm-samples-and-beams", T("generate", "-m", "tiny.model", "-p", "the", "--num-samples", "2", "--beams", "2"), MODEL_FILE,
         ["--beams", "--num-samples"]),
    Case("tinylm-resume-and-model", T("train", "--resume", "-m", "tiny.model", "-d", "corpus.txt", "-o", "out.model"),
         {**MODEL_FILE, **CORPUS_FILE}, ["--resume", "-m"]),
    Case("tinylm-ignore-mismatch-without-resume", T("train", *TRAIN_TINY, "--ignore-mismatch", "-d", "corpus.txt", "-o", "out.model"),
         CORPUS_FILE, ["--ignore-mismatch", "--resume"]),
    # ---- resuming
    Case("tinylm-resume-without-checkpoint", T(*RESUME), CORPUS_FILE, ["no checkpoint to resume", "out.model.ckpt"]),
    Case("tinylm-resume-different-data", T(*RESUME), {"corpus.txt": "corpus2", **RUN}, ["cannot resume", "the data", "--ignore-mismatch"]),
    Case("tinylm-resume-different-flags", T(*RESUME, "--lr", "0.5"), {**CORPUS_FILE, **RUN}, ["cannot resume", "--lr 0.001 -> 0.5", "--ignore-mismatch"]),
    Case("tinylm-resume-different-shape", T(*RESUME, "--layers", "2"), {**CORPUS_FILE, **RUN}, ["cannot resume", "--layers 1 -> 2"]),
    Case("tinylm-resume-missing-file", T("train", *TRAIN_TINY, "--resume", "gone.ckpt", "-d", "corpus.txt", "-o", "new.model"), CORPUS_FILE,
         ["gone.ckpt", "does not exist"]),
    Case("tinylm-resume-truncated-checkpoint", T("train", *TRAIN_TINY, "--resume", "cut.ckpt", "-d", "corpus.txt", "-o", "new.model"),
         {**CORPUS_FILE, "cut.ckpt": "truncated-ckpt"}, ["cut.ckpt", "damaged"]),
    Case("tinylm-resume-text-file", T("train", *TRAIN_TINY, "--resume", "corpus.txt", "-d", "corpus.txt", "-o", "new.model"), CORPUS_FILE,
         ["corpus.txt", "not a tinylm checkpoint"]),
    Case("tinylm-resume-hostile-torch-file", T("train", *TRAIN_TINY, "--resume", "evil.ckpt", "-d", "corpus.txt", "-o", "new.model"),
         {**CORPUS_FILE, "evil.ckpt": "hostile-torch"}, ["evil.ckpt", "refused", "run code"]),
    Case("tinylm-resume-hostile-pickle", T("train", *TRAIN_TINY, "--resume", "evil.pkl", "-d", "corpus.txt", "-o", "new.model"),
         {**CORPUS_FILE, "evil.pkl": "hostile-pickle"}, ["evil.pkl", "refused", "run code"]),
    Case("tinylm-earlier-checkpoints", T("train", *TRAIN_TINY, "-d", "corpus.txt", "-o", "out.model"),
         {**CORPUS_FILE, "out.model.ckpt": "run-ckpts"}, ["earlier run", "--resume", "--force"]),
    Case("main-earlier-checkpoints", M("-t", "-c", "-d", "corpus.txt", "-o", "out.model"), {**CORPUS_FILE, "out.model.ckpt": "run-ckpts"},
         ["earlier run", "-t -m out.model"]),
    # ---- argparse-level errors
    Case("main-no-mode", M("-d", "corpus.txt"), CORPUS_FILE, ["one of the arguments -i/--inference -t/--training is required"], argparse=True),
    Case("main-both-modes", M("-i", "-t"), {}, ["not allowed with argument"], argparse=True),
    Case("main-cpu-and-gpu", M("-t", "-c", "-g", "-d", "corpus.txt"), CORPUS_FILE, ["not allowed with argument"], argparse=True),
    Case("tinylm-top-k-not-a-number", T("generate", "-m", "tiny.model", "-p", "the", "--top-k", "abc"), MODEL_FILE, ["--top-k", "abc"], argparse=True),
    Case("tinylm-unknown-positions", T("train", "--positions", "alibi", "-d", "corpus.txt"), CORPUS_FILE, ["--positions", "alibi"], argparse=True),
    Case("tinylm-unknown-weights", T("generate", "-m", "tiny.model", "-p", "the", "--weights", "int4"), MODEL_FILE, ["--weights", "int4"], argparse=True),
    Case("tinylm-generate-without-prompt", T("generate", "-m", "tiny.model"), MODEL_FILE, ["-p/--prompt"], argparse=True),
]


# ---------------------------------------------------------------- the files each case starts with

def model_bytes(folder: Path) -> bytes:
    tok = CharTokenizer.train(CORPUS)
    path = folder / "src.model"
    if not path.exists():
        save_model(path, make_model(seed=0, vocab_size=tok.vocab_size, context_size=16, n_layer=1), tok, {"steps": 0})
    return path.read_bytes()


def trained_run(folder: Path) -> Path:
    """`tinylm train *TRAIN_TINY -d corpus.txt -o out.model`, run once in-process: its model and
    checkpoint folder are what the resume cases start from."""
    from tinylm.cli import build_parser, job_from_args
    from tinylm.runner import run_training

    run = folder / "_run"
    if not run.exists():
        run.mkdir()
        (run / "corpus.txt").write_text(CORPUS, encoding="utf-8")
        run_training(job_from_args(build_parser().parse_args(["train", *TRAIN_TINY, "-d", str(run / "corpus.txt"),
                                                              "-o", str(run / "out.model")])))
    return run


def hostile_bytes(kind: str) -> bytes:
    if kind == "hostile-pickle":  # a bare pickle
        return pickle.dumps({"model": Hostile()}, protocol=2)
    buf = __import__("io").BytesIO()  # torch.save's zip format with the same payload inside
    torch.save({"format": "tinylm-train-state-1", "model": Hostile()}, buf)
    return buf.getvalue()


def make_file(path: Path, kind: str, good_model: bytes, base: Path | None = None) -> None:
    if kind == "dir":
        path.mkdir()
        (path / "a.txt").write_text("inside a folder\n")
        return
    if kind in ("run-model", "run-ckpts"):
        src = trained_run(base) / ("out.model" if kind == "run-model" else "out.model.ckpt")
        if src.is_dir():
            shutil.copytree(src, path)
        else:
            shutil.copyfile(src, path)
        return
    if kind == "unreadable":
        path.write_text(CORPUS)
        path.chmod(0)
        return
    if kind == "foreign":
        from safetensors.torch import save_file

        save_file({"weight": torch.zeros(3, 3)}, str(path), metadata={"format": "pt"})
        return
    if kind == "truncated-ckpt":
        ckpt = next((trained_run(base) / "out.model.ckpt").glob("step-*.ckpt")).read_bytes()
        path.write_bytes(ckpt[:len(ckpt) // 2])
        return
    if kind.startswith("hostile"):
        path.write_bytes(hostile_bytes(kind))
        return
    data = {
        "corpus": CORPUS.encode("utf-8"),
        "corpus2": make_text(3000, seed=4).encode("utf-8"),
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
        # tinylm's own cache ($TINYLM_CACHE, placed here by cli_env) is not the user's: a run may
        # leave a content-keyed token file there even when it then rejects the dataset
        dirs[:] = [d for d in dirs if not (root == str(folder) and d == ".tinylm-cache")]
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = "dir"
        for f in files:
            p = Path(root) / f
            try:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            except PermissionError:  # the unreadable-dataset cases
                digest = "unreadable"
            out[os.path.relpath(p, folder)] = (p.stat().st_mtime_ns, digest)
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
        if case.id not in selected or any(m.name == "skipif" and m.args and m.args[0] for m in case.marks):
            continue
        d = base / case.id
        d.mkdir()
        for name, kind in case.files.items():
            make_file(d / name, kind, good_model, base)
        folders[case.id] = (case, d, snapshot(d))

    def run(item):
        case, d, before = item
        rc, out, err = run_cli(case.argv, d, timeout=120)
        return case.id, (rc, out, err, before, snapshot(d), (d / MARKER).exists())

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        return dict(pool.map(run, folders.values()))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case, outcomes):
    rc, out, err, before, after, pwned = outcomes[case.id]
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
    if pwned:
        problems.append("loading a hostile file ran its code")
    if after != before:
        changed = sorted(set(after) ^ set(before) | {k for k in before if k in after and before[k] != after[k]})
        problems.append(f"the command changed, created or removed {changed}")
    assert not problems, "; ".join(problems) + f"\nstderr:\n{err}"


def test_huge_single_line_dataset_trains(tmp_path):
    """Not an error: a dataset of one 1 MB line (no newline at all) trains like any other text,
    since tinylm reads whole files and cuts windows by tokens, never by lines."""
    text = (make_text(1_000_000, seed=5).replace("\n", " ")).encode("utf-8")
    (tmp_path / "one-line.txt").write_bytes(text)
    rc, _, err = run_cli(["train", *TRAIN_TINY, "--batch-size", "4", "-d", "one-line.txt", "-o", "out.model"], tmp_path)
    assert rc == 0 and "Traceback" not in err, err
    assert (tmp_path / "one-line.txt").read_bytes() == text
    assert (tmp_path / "out.model").is_file()
