"""Bad input to `tinylm export`, `tinylm import` and checkpoints given as models: exit code 2,
one `error: ...` line naming the problem, no traceback, and no file in the case's folder changed,
created or removed. docs/bad-input.md ("HuggingFace export and import") lists the same cases.

Each case runs as its own process in its own folder. To pay for importing torch once rather than
once per case, one driver process imports the CLI and forks a child per case (real processes:
their own exit code and stderr, nothing shared but the imported modules).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, cli_env, make_text
from tinylm.interop.hf_export import export_hf
from tinylm.model.files import save_model
from tinylm.model.gpt import GPT, GPTConfig
from tinylm.tokenizers import CharTokenizer
from tinylm.tokenizers.bpe import BPETokenizer, train_bpe

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the case driver forks")

TEXT = make_text(3000, seed=5)
EXPORT = ["export", "--format", "hf", "-m"]
IMPORT = ["import", "--format", "hf"]

CASES = {  # id -> (argv of `tinylm`, {file name: kind}, words the error line must hold)
    "export-dir-not-empty": ([*EXPORT, "tiny.model", "-o", "out"], {"tiny.model": "model", "out": "notes-dir"},
                             ["out", "not empty", "--force"]),
    "export-output-is-a-file": ([*EXPORT, "tiny.model", "-o", "out"], {"tiny.model": "model", "out": "text"},
                                ["out", "is a file"]),
    "export-parent-folder-missing": ([*EXPORT, "tiny.model", "-o", "no/such/out"], {"tiny.model": "model"},
                                     ["no/such", "does not exist", "mkdir -p"]),
    "import-output-folder-missing": ([*IMPORT, "hf", "-o", "nowhere/g.model"], {"hf": "hf"},
                                     ["nowhere", "does not exist", "mkdir -p"]),
    "export-missing-model": ([*EXPORT, "gone.model", "-o", "out"], {}, ["gone.model", "does not exist"]),
    "export-qk-norm": ([*EXPORT, "qk.model", "-o", "out"], {"qk.model": "model-qk-norm"}, ["--qk-norm"]),
    "export-softcap": ([*EXPORT, "cap.model", "-o", "out"], {"cap.model": "model-softcap"}, ["--softcap 30"]),
    "export-swiglu-learned": ([*EXPORT, "sw.model", "-o", "out"], {"sw.model": "model-swiglu"}, ["swiglu", "--positions rope"]),
    "export-tinylm-onto-input": (["export", "--format", "tinylm", "-m", "tiny.model", "-o", "tiny.model", "--force"],
                                 {"tiny.model": "model"}, ["tiny.model", "is the input"]),
    "export-tinylm-output-exists": (["export", "--format", "tinylm", "-m", "tiny.model", "-o", "old.model"],
                                    {"tiny.model": "model", "old.model": "text"}, ["old.model", "exists", "--force"]),
    "export-checkpoint-folder": ([*EXPORT, "run.model.ckpt", "-o", "out"], {"run.model.ckpt": "notes-dir"},
                                 ["run.model.ckpt", "checkpoint folder", "best.ckpt"]),
    "generate-checkpoint-folder": (["generate", "-m", "run.model.ckpt", "-p", "the"], {"run.model.ckpt": "notes-dir"},
                                   ["checkpoint folder"]),
    "generate-truncated-checkpoint": (["generate", "-m", "cut.ckpt", "-p", "the"], {"cut.ckpt": "ckpt-truncated"},
                                      ["cut.ckpt", "damaged"]),
    "export-hostile-checkpoint": ([*EXPORT, "evil.ckpt", "-o", "out"], {"evil.ckpt": "ckpt-hostile"},
                                  ["evil.ckpt", "refused", "run code"]),
    "eval-foreign-torch-file": (["eval", "-m", "other.ckpt", "-d", "notes.txt"], {"other.ckpt": "ckpt-foreign", "notes.txt": "text"},
                                ["other.ckpt", "not a tinylm training checkpoint"]),
    "import-missing-folder": ([*IMPORT, "gone", "-o", "g.model"], {}, ["gone", "does not exist"]),
    "import-folder-is-a-file": ([*IMPORT, "hf", "-o", "g.model"], {"hf": "text"}, ["hf", "is not a folder"]),
    "import-no-config": ([*IMPORT, "hf", "-o", "g.model"], {"hf": "notes-dir"}, ["no config.json"]),
    "import-unsupported-family": ([*IMPORT, "hf", "-o", "g.model"], {"hf": "hf-llama"}, ["'llama'", "GPT-2-family", "gpt2"]),
    "import-truncated-safetensors": ([*IMPORT, "hf", "-o", "g.model"], {"hf": "hf-truncated"},
                                     ["model.safetensors", "truncated"]),
    "import-config-disagrees": ([*IMPORT, "hf", "-o", "g.model"], {"hf": "hf-wider-config"},
                                ["config.json disagrees with the weights", "wte.weight"]),
    "import-vocab-disagrees": ([*IMPORT, "hf", "-o", "g.model"], {"hf": "hf-vocab"}, ["vocab_size 999", "tokenizer"]),
    "import-erf-gelu": ([*IMPORT, "hf", "-o", "g.model"], {"hf": "hf-erf-gelu"}, ["activation_function 'gelu'"]),
    "import-no-tokenizer": ([*IMPORT, "hf", "-o", "g.model"], {"hf": "hf-no-tokenizer"}, ["no tokenizer files"]),
    "import-no-weights": ([*IMPORT, "hf", "-o", "g.model"], {"hf": "hf-no-weights"}, ["no model.safetensors"]),
    "import-sharded": ([*IMPORT, "hf", "-o", "g.model"], {"hf": "hf-sharded"}, ["sharded"]),
    "import-bad-config-json": ([*IMPORT, "hf", "-o", "g.model"], {"hf": "hf-bad-json"}, ["config.json", "JSON"]),
    "import-output-exists": ([*IMPORT, "hf", "-o", "g.model"], {"hf": "hf", "g.model": "text"}, ["g.model", "exists", "--force"]),
    "import-output-is-input": ([*IMPORT, "hf", "-o", "hf/model.safetensors", "--force"], {"hf": "hf"}, ["is the input"]),
}


class Hostile:
    """Unpickling this would create the file PWNED: a stand-in for code a crafted checkpoint runs."""

    def __reduce__(self):
        return (open, ("PWNED", "w"))


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def tiny(tok, **options) -> GPT:
    return GPT(GPTConfig(vocab_size=tok.vocab_size, context_size=16, n_layer=1, n_head=2, n_embd=32, **options))


def make_file(path: Path, kind: str, assets: dict) -> None:
    if kind == "text":
        path.write_text("some notes\n")
    elif kind == "notes-dir":
        path.mkdir()
        (path / "notes.txt").write_text("some notes\n")
    elif kind.startswith("ckpt"):  # torch.save archives, as checkpoints are
        data = {"ckpt-truncated": lambda: torch_bytes({"format": "tinylm-train-state-1", "model": {"w": torch.zeros(64, 64)}})[:3000],
                "ckpt-hostile": lambda: torch_bytes({"format": "tinylm-train-state-1", "model": Hostile()}),
                "ckpt-foreign": lambda: torch_bytes({"weight": torch.zeros(3)})}[kind]()
        path.write_bytes(data)
    elif kind.startswith("model"):
        options = {"model": {}, "model-qk-norm": {"qk_norm": True}, "model-softcap": {"logit_softcap": 30.0},
                   "model-swiglu": {"activation": "swiglu"}}[kind]
        save_model(path, tiny(assets["char"], **options), assets["char"])
    else:  # an HF folder, good ("hf") or damaged one way
        export_hf(tiny(assets["gpt2"]), assets["gpt2"], path)
        conf = json.loads((path / "config.json").read_text())
        weights = path / "model.safetensors"
        if kind == "hf-llama":
            conf.update(model_type="llama", architectures=["LlamaForCausalLM"])
        elif kind == "hf-wider-config":
            conf["n_embd"] = 64
        elif kind == "hf-vocab":
            conf["vocab_size"] = 999
        elif kind == "hf-erf-gelu":
            conf["activation_function"] = "gelu"
        elif kind == "hf-truncated":
            weights.write_bytes(weights.read_bytes()[:-100])
        elif kind == "hf-no-tokenizer":
            (path / "tokenizer.json").unlink()
        elif kind in ("hf-no-weights", "hf-sharded"):
            weights.unlink()
            if kind == "hf-sharded":
                (path / "model.safetensors.index.json").write_text('{"weight_map": {}}')
        if kind == "hf-bad-json":
            (path / "config.json").write_text('{"model_type": "gpt2",')
        else:
            (path / "config.json").write_text(json.dumps(conf))


def snapshot(folder: Path) -> dict[str, object]:
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != ".tinylm-cache"]
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), folder)] = "dir"
        for name in files:
            p = Path(root) / name
            out[os.path.relpath(p, folder)] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


DRIVER = r"""
import json, os, sys
from tinylm import cli
jobs, results = json.loads(sys.argv[1]), {}
for name, (folder, argv) in jobs.items():
    pid = os.fork()
    if pid == 0:
        os.chdir(folder)
        for fd, file in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(os.path.join(folder, os.pardir, name + "." + file), os.O_WRONLY | os.O_CREAT), fd)
        sys.argv = ["tinylm", *argv]
        try:
            rc = cli.main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback; traceback.print_exc(); rc = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(rc)
    results[name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """case id -> (exit code, stderr, files before, files after)."""
    base = tmp_path_factory.mktemp("bad_input_interop")
    bpe = train_bpe(TEXT, 300, progress=False)
    assets = {"char": CharTokenizer.train(TEXT),
              "gpt2": BPETokenizer(bpe.tokens, "gpt2", {"<|endoftext|>": len(bpe.tokens)}, eos="<|endoftext|>", kind="gpt2")}
    jobs, before = {}, {}
    for name, (argv, files, _) in CASES.items():
        d = base / "cases" / name
        d.mkdir(parents=True)
        for fname, kind in files.items():
            make_file(d / fname, kind, assets)
        jobs[name] = (str(d), argv)
        before[name] = snapshot(d)
    env = cli_env(base, {"PYTHONPATH": str(REPO)})
    res = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(jobs)], cwd=base, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    codes = json.loads(res.stdout.splitlines()[-1])
    return {name: (codes[name], (base / "cases" / f"{name}.stderr").read_text(errors="replace"), before[name],
                   snapshot(base / "cases" / name)) for name in CASES}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_interop(outcomes, name):
    rc, err, before, after = outcomes[name]
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    missing = [w for w in CASES[name][2] if w not in lines[0]]
    assert not missing, f"the error line does not say {missing}: {lines[0]}"
    assert after == before, f"files changed: {sorted(set(after) ^ set(before) | {k for k in before if after.get(k) != before[k]})}"
