"""End to end in subprocesses: the classic `main.py -t` / `-i` interface and the `tinylm`
subcommands, on small built-in corpora."""

from __future__ import annotations

import math
import queue
import re
import signal
import subprocess
import threading
import time

import pytest
import torch

from conftest import cli_command, cli_env, make_text, run_cli
from tinylm.model.files import load_model
from tinylm.generate.engine import SamplingConfig
from tinylm.generate.text import generate_text
from tinylm.train.trainer import evaluate

MAIN_USAGE = "usage: main.py [-h] (-i | -t) [-c | -g] [-m MODEL] [-d DATASET] [-o OUTPUT] [-p PROMPT]"


def test_main_help_usage_line_is_exact(tmp_path):
    rc, out, err = run_cli(["main.py", "--help"], tmp_path)
    assert rc == 0, err
    assert out.splitlines()[0] == MAIN_USAGE
    for flag in ("-i, --inference", "-t, --training", "-c, --cpu", "-g, --gpu", "-m, --model MODEL",
                 "-d, --dataset DATASET", "-o, --output OUTPUT", "-p, --prompt PROMPT"):
        assert flag in out


# ---------------------------------------------------------------- classic main.py

def read_lines(stream, q: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        q.put(line)
    q.put(None)


def test_classic_train_interrupt_then_infer(tmp_path):
    # The classic preset trains for up to 10000 epochs: stop it with Ctrl-C (SIGINT) after the
    # first epoch, as a user would, and check that it saves and exits cleanly.
    text = make_text(3000, seed=1)
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    cmd = cli_command(["main.py", "-t", "-c", "-d", "corpus.txt", "-o", "out.model"])
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace")
    q: queue.Queue = queue.Queue()
    threads = [threading.Thread(target=read_lines, args=(s, q), daemon=True) for s in (proc.stderr,)]
    for t in threads:
        t.start()
    lines: list[str] = []
    deadline = time.time() + 240
    try:
        while True:
            line = q.get(timeout=max(1.0, deadline - time.time()))
            if line is None:
                pytest.fail("training exited before finishing an epoch:\n" + "".join(lines))
            lines.append(line)
            if "Epoch 1 done" in line:
                break
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for t in threads:
        t.join(timeout=10)
    while not q.empty():
        line = q.get()
        if line is not None:
            lines.append(line)
    err = "".join(lines)
    stdout = proc.stdout.read()
    assert rc == 0, err
    assert "Traceback" not in err
    assert "Interrupted" in err
    assert re.search(r"Saved the model to out\.model\b", err), err
    assert (tmp_path / "out.model").is_file() and (tmp_path / "out.last.model").is_file()
    assert stdout == ""  # the log goes to stderr
    loaded = load_model(tmp_path / "out.model")
    assert loaded.model.cfg.context_size == 512 and loaded.model.cfg.n_embd == 192
    assert loaded.meta["steps"] >= 1

    prompt = "The king"
    rc, out, err = run_cli(["main.py", "-i", "-m", "out.model", "-p", prompt], tmp_path)
    assert rc == 0, err
    assert "Traceback" not in err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(prompt))
    generated = "\n".join(lines[start:])[len(prompt):]
    assert len(generated) > 0
    assert set(generated) <= set(text) | {"\ufffd"}


# ---------------------------------------------------------------- tinylm subcommands

TRAIN_FLAGS = ["--layers", "1", "--embd", "32", "--heads", "2", "--context", "16", "--steps", "20", "--batch-size", "4",
               "--warmup", "2", "--lr", "1e-2"]  # the default warmup (100) is longer than this whole run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained by `tinylm train` once for this module: (folder, corpus text, rc, stderr)."""
    d = tmp_path_factory.mktemp("cli")
    text = make_text(4000, seed=2)
    (d / "corpus.txt").write_text(text, encoding="utf-8")
    rc, out, err = run_cli(["train", *TRAIN_FLAGS, "-d", "corpus.txt", "-o", "out.model"], d)
    return d, text, rc, err


def test_tinylm_train(trained):
    d, text, rc, err = trained
    assert rc == 0, err
    assert "Traceback" not in err
    assert (d / "out.model").is_file() and (d / "out.last.model").is_file()
    assert "Saved the model to out.model" in err
    loaded = load_model(d / "out.model")
    c = loaded.model.cfg
    assert (c.n_layer, c.n_embd, c.n_head, c.context_size) == (1, 32, 2, 16)
    last = load_model(d / "out.last.model")
    assert last.meta["steps"] == 20
    assert last.meta["train_config"]["batch_size"] == 4
    assert sorted(loaded.tokenizer.chars) == sorted(set(text))


def test_tinylm_generate(trained):
    d, text, rc, _ = trained
    assert rc == 0
    prompt = "The king"
    args = ["generate", "-m", "out.model", "-p", prompt, "-n", "30", "--seed", "3"]
    rc1, out1, err1 = run_cli(args, d)
    assert rc1 == 0, err1
    assert out1.startswith(prompt) and out1.endswith("\n")
    assert 0 < len(out1) - len(prompt) - 1 <= 30
    assert set(out1[len(prompt):-1]) <= set(text) | {"\ufffd"}  # U+FFFD: <UNK>, which a 20-step model may still emit
    # temperature 0 equals the library's greedy output for the same model
    rc2, out2, err2 = run_cli(["generate", "-m", "out.model", "-p", prompt, "-n", "25", "--temperature", "0"], d)
    assert rc2 == 0, err2
    loaded = load_model(d / "out.model")
    want = generate_text(loaded.model, loaded.tokenizer, prompt, SamplingConfig(max_new_tokens=25, temperature=0.0))
    assert out2 == prompt + want + "\n"


def test_tinylm_generate_seeded_is_reproducible(trained):
    d, _, rc, _ = trained
    assert rc == 0
    args = ["generate", "-m", "out.model", "-p", "She said", "-n", "20", "--seed", "5", "--top-k", "5", "--top-p", "0.9"]
    a, b = run_cli(args, d), run_cli(args, d)
    assert a[0] == 0, a[2]
    assert a[1] == b[1] and a[1].startswith("She said")


def test_tinylm_generate_with_beams(trained):
    d, _, rc, _ = trained
    assert rc == 0
    rc, out, err = run_cli(["generate", "-m", "out.model", "-p", "She said", "-n", "10", "--beams", "3"], d)
    assert rc == 0, err
    assert out.startswith("She said") and len(out) <= len("She said") + 10 + 1


def test_tinylm_eval(trained):
    d, text, rc, _ = trained
    assert rc == 0
    rc, out, err = run_cli(["eval", "-m", "out.model", "-d", "corpus.txt", "--batch-size", "8"], d)
    assert rc == 0, err
    vals = dict(line.split(": ") for line in out.strip().splitlines())
    loss, ppl = float(vals["loss"]), float(vals["perplexity"])
    assert int(vals["tokens"]) == len(text) - 1
    assert ppl == pytest.approx(math.exp(loss), rel=2e-4)
    loaded = load_model(d / "out.model")
    ids = torch.tensor(loaded.tokenizer.encode(text))
    want = evaluate(loaded.model, ids, 16, 8, torch.device("cpu"))
    assert loss == pytest.approx(want, abs=1e-4)
    assert loss < math.log(loaded.tokenizer.vocab_size)  # 20 steps beat a uniform guess


def test_tinylm_train_continues_from_a_model(trained, tmp_path):
    d, _, rc, _ = trained
    assert rc == 0
    (tmp_path / "corpus.txt").write_bytes((d / "corpus.txt").read_bytes())
    (tmp_path / "m.model").write_bytes((d / "out.model").read_bytes())
    before = (tmp_path / "m.model").read_bytes()
    rc, out, err = run_cli(["train", "-m", "m.model", "-o", "m.model", "-d", "corpus.txt", "--steps", "3", "--batch-size", "4"], tmp_path)
    assert rc == 0, err
    assert "Continuing training from m.model" in err
    assert (tmp_path / "m.model").read_bytes() != before
    assert load_model(tmp_path / "m.model").model.cfg.n_embd == 32


@pytest.mark.parametrize("sub", [["train"], ["generate"], ["eval"], ["tokenizer"], []])
def test_tinylm_help(tmp_path, sub):
    rc, out, err = run_cli([*sub, "--help"], tmp_path)
    assert rc == 0, err
    assert out.startswith("usage: tinylm" + (" " + sub[0] if sub else ""))
    words = {"train": ["--layers", "--steps", "--dataset", "--force", "--preset"],
             "generate": ["--prompt", "--temperature", "--top-k", "--top-p", "--beams", "--unknown"],
             "eval": ["--model", "--dataset", "--batch-size"], "tokenizer": ["train"],
             None: ["train", "generate", "eval", "tokenizer"]}[sub[0] if sub else None]
    for w in words:
        assert w in out
    assert err == ""
