"""Bad input to the report commands (tinylm plot, info, eval --copying, train's metrics file and
--tensorboard), through the command line's main (one case also in a subprocess): exit code 2, one error line that
names the problem, no traceback, and no file of the user's created, changed or removed.
docs/bad-input.md lists the same cases ("Metrics, plots, model cards, copying")."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

from conftest import REPO, make_model, make_text, run_cli
from tinylm.model.files import save_model
from tinylm.report.metrics import MetricsWriter
from tinylm.tokenizers import CharTokenizer

CORPUS = make_text(3000, seed=3)
TINY = ["--layers", "1", "--embd", "32", "--heads", "2", "--context", "16", "--steps", "1", "--batch-size", "2"]
NO_TENSORBOARD = "no-tensorboard"  # a folder put first on PYTHONPATH whose `tensorboard` package fails to import


def make_files(d: Path, kinds: dict[str, str]) -> None:
    for name, kind in kinds.items():
        p = d / name
        if kind == "corpus":
            p.write_text(CORPUS, encoding="utf-8")
        elif kind == "model":
            tok = CharTokenizer.train(CORPUS)
            save_model(p, make_model(vocab_size=tok.vocab_size, n_layer=1), tok, {"steps": 0})
        elif kind == "metrics":
            w = MetricsWriter(p)
            w.start(0.0, 0)
            w.train(1, 32, 0.1, 3.0, 1e-3, 1.0)
            w.close()
        elif kind == "other-json":
            p.write_text('{"loss": 1.0}\n{"loss": 0.9}\n', encoding="utf-8")
        elif kind == "binary":
            p.write_bytes(bytes(range(256)) * 4)
        elif kind == "empty":
            p.write_bytes(b"")
        elif kind == "png":
            p.write_bytes(b"\x89PNG\r\n\x1a\nold picture")
        elif kind == "dir":
            p.mkdir()
        else:
            raise AssertionError(kind)


CASES = [  # (id, argv, files, words in the error line, env)
    ("plot-text-file", ["plot", "notes.txt", "-o", "c.png"], {"notes.txt": "corpus"}, ["notes.txt", "not a tinylm metrics file"]),
    ("plot-other-jsonl", ["plot", "other.jsonl", "-o", "c.png"], {"other.jsonl": "other-json"},
     ["other.jsonl", "not a tinylm metrics file", "kind"]),
    ("plot-binary", ["plot", "data.jsonl", "-o", "c.png"], {"data.jsonl": "binary"}, ["data.jsonl", "not a tinylm metrics file"]),
    ("plot-empty", ["plot", "run.metrics.jsonl", "-o", "c.png"], {"run.metrics.jsonl": "empty"}, ["no rows"]),
    ("plot-missing-file", ["plot", "gone.metrics.jsonl", "-o", "c.png"], {}, ["gone.metrics.jsonl", "does not exist"]),
    ("plot-model-without-metrics", ["plot", "tiny.model", "-o", "c.png"], {"tiny.model": "model"},
     ["tiny.metrics.jsonl", "tiny.model", "does not exist"]),
    ("plot-output-exists", ["plot", "run.metrics.jsonl", "-o", "c.png"], {"run.metrics.jsonl": "metrics", "c.png": "png"},
     ["c.png", "already exists", "--force"]),
    ("plot-output-is-input", ["plot", "run.metrics.jsonl", "-o", "run.metrics.jsonl", "--force"], {"run.metrics.jsonl": "metrics"},
     ["is the input"]),
    ("plot-output-is-directory", ["plot", "run.metrics.jsonl", "-o", "pics"], {"run.metrics.jsonl": "metrics", "pics": "dir"},
     ["pics", "is a directory"]),
    ("plot-output-folder-missing", ["plot", "run.metrics.jsonl", "-o", "nodir/c.png"], {"run.metrics.jsonl": "metrics"},
     ["nodir", "does not exist"]),
    ("train-metrics-exists", ["train", *TINY, "-d", "corpus.txt", "-o", "out.model"],
     {"corpus.txt": "corpus", "out.metrics.jsonl": "metrics"}, ["out.metrics.jsonl", "already exists", "--force"]),
    ("train-metrics-is-directory", ["train", *TINY, "-d", "corpus.txt", "-o", "out.model", "--force"],
     {"corpus.txt": "corpus", "out.metrics.jsonl": "dir"}, ["out.metrics.jsonl", "not a regular file"]),
    ("train-tensorboard-missing", ["train", *TINY, "-d", "corpus.txt", "-o", "out.model", "--tensorboard", "tb"],
     {"corpus.txt": "corpus"}, ["--tensorboard", "pip install 'tinylm[tensorboard]'"], NO_TENSORBOARD),
    ("train-tensorboard-is-a-file", ["train", *TINY, "-d", "corpus.txt", "-o", "out.model", "--tensorboard", "notes.txt"],
     {"corpus.txt": "corpus", "notes.txt": "corpus"}, ["notes.txt", "is a file"]),
    ("info-text-file", ["info", "-m", "notes.txt"], {"notes.txt": "corpus"}, ["notes.txt", "not a usable tinylm model file"]),
    ("info-missing", ["info", "-m", "gone.model"], {}, ["gone.model", "does not exist"]),
    ("info-metrics-file", ["info", "-m", "run.metrics.jsonl", "--json"], {"run.metrics.jsonl": "metrics"},
     ["run.metrics.jsonl", "not a usable tinylm model file"]),
    ("copying-zero-samples", ["eval", "-m", "tiny.model", "-d", "corpus.txt", "--copying", "--samples", "0"],
     {"tiny.model": "model", "corpus.txt": "corpus"}, ["--samples", "0"]),
    ("copying-zero-length", ["eval", "-m", "tiny.model", "-d", "corpus.txt", "--copying", "--length", "0"],
     {"tiny.model": "model", "corpus.txt": "corpus"}, ["--length", "0"]),
    ("copying-missing-dataset", ["eval", "-m", "tiny.model", "-d", "gone.txt", "--copying"], {"tiny.model": "model"},
     ["gone.txt", "does not exist"]),
    ("copying-binary-dataset", ["eval", "-m", "tiny.model", "-d", "data.bin", "--copying"], {"tiny.model": "model", "data.bin": "binary"},
     ["data.bin"]),
]


def snapshot(folder: Path) -> dict:
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not (root == str(folder) and d in (".tinylm-cache", NO_TENSORBOARD))]
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = "dir"
        for f in files:
            p = Path(root) / f
            out[os.path.relpath(p, folder)] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_report(case, tmp_path, monkeypatch, capsys):
    """In-process (cli.main, as `python -m tinylm` runs it): each case would otherwise spend most
    of its time importing torch in a subprocess. The line printed and the exit code are main's."""
    from tinylm.cli import main

    case_id, argv, files, words, *env = case
    make_files(tmp_path, files)
    if env and env[0] == NO_TENSORBOARD:  # as if tensorboard were not installed: its import fails
        monkeypatch.setitem(sys.modules, "tensorboard", None)
        for name in [m for m in sys.modules if m.startswith("torch.utils.tensorboard")]:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    rc = main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    missing = [w for w in words if w not in lines[0]]
    assert not missing, f"the error line does not say {missing}: {lines[0]}"
    assert snapshot(tmp_path) == before, "the command changed, created or removed files"


def test_tensorboard_missing_through_the_real_command_line(tmp_path):
    """One case in a subprocess, tensorboard hidden by a package on PYTHONPATH that fails to import."""
    make_files(tmp_path, {"corpus.txt": "corpus"})
    fake = tmp_path / NO_TENSORBOARD / "tensorboard"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('tensorboard hidden by the test')\n", encoding="utf-8")
    before = snapshot(tmp_path)
    rc, _, err = run_cli(["train", *TINY, "-d", "corpus.txt", "-o", "out.model", "--tensorboard", "tb"], tmp_path,
                         env={"PYTHONPATH": os.pathsep.join([str(tmp_path / NO_TENSORBOARD), str(REPO)])})
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines() == ["error: --tensorboard needs the tensorboard package, which is not installed; "
                                        "pip install 'tinylm[tensorboard]', or drop --tensorboard (the metrics file is "
                                        "written anyway)"]
    assert snapshot(tmp_path) == before
