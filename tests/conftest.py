"""Shared fixtures for tinylm's tests: a small built-in corpus, tiny model factories, a saved
model file, and `run_cli` for end-to-end runs of `python -m tinylm` / `python main.py` in a
subprocess.

Everything here is hermetic: no network, files only under pytest's tmp_path, and subprocesses
get TINYLM_CACHE / XDG_CACHE_HOME pointed at a temporary folder so ~/.cache is never touched.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

if str(REPO) not in sys.path:  # so `import tinylm` works however pytest was started
    sys.path.insert(0, str(REPO))

from tinylm.model.gpt import GPT, GPTConfig  # noqa: E402
from tinylm.tokenizers import CharTokenizer  # noqa: E402

WORDS = ("the king and queen of a far land sent word to their good friend who lived by the sea "
         "that summer was long and the rain did not come so all the men went to the old well "
         "she said we shall not be afraid of night nor of the wind for our house is strong").split()


def make_text(n_chars: int, seed: int = 0) -> str:
    """Deterministic pseudo-English: lines of sentences from a small word list, about n_chars long.
    Its alphabet is lowercase letters, ' ', ',', '.', '\\n' and capitals that start sentences."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n_chars:
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
        sentence = " ".join(words).capitalize() + rng.choice([".", ".", ","]) + rng.choice([" ", "\n"])
        out.append(sentence)
        size += len(sentence)
    return "".join(out)[:n_chars]


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """In-process runs cache token files under $TINYLM_CACHE: keep them out of ~/.cache."""
    old = os.environ.get("TINYLM_CACHE")
    os.environ["TINYLM_CACHE"] = str(tmp_path_factory.mktemp("tinylm-cache"))
    yield
    if old is None:
        os.environ.pop("TINYLM_CACHE", None)
    else:
        os.environ["TINYLM_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def one_cpu_thread():
    """Tiny models run as fast on one thread, and on a busy 2-core CI machine a second intra-op
    thread makes every step stall. TINYLM_THREADS keeps Trainer (device.configure) at one too."""
    before, env = torch.get_num_threads(), os.environ.get("TINYLM_THREADS")
    torch.set_num_threads(1)
    os.environ["TINYLM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("TINYLM_THREADS", None)
    else:
        os.environ["TINYLM_THREADS"] = env


@pytest.fixture(autouse=True)
def default_matmul_precision():
    """A CUDA Trainer turns TF32 matmuls on for the whole process (device.configure); put PyTorch's
    defaults back after each test, so that later fp32 comparisons are not run in TF32."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """About 6000 characters of built-in text: enough for a context-16 model and a val split."""
    return make_text(6000)


@pytest.fixture
def corpus_file(tmp_path, corpus_text) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(corpus_text, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} not present (CI has ../shared beside the repo)")
    return SHAKESPEARE.read_text(encoding="utf-8")


def tiny_config(**overrides) -> GPTConfig:
    """A model small enough to train for a few hundred steps on 2 CPU cores in seconds."""
    kw = dict(vocab_size=40, context_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    kw.update(overrides)
    return GPTConfig(**kw)


def make_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).eval()


@pytest.fixture
def tiny_model():
    """Factory: tiny_model(seed=0, **GPTConfig overrides) -> GPT in eval mode."""
    return make_model


@pytest.fixture
def char_tokenizer(corpus_text) -> CharTokenizer:
    return CharTokenizer.train(corpus_text)


@pytest.fixture
def model_file(tmp_path, char_tokenizer) -> Path:
    """A randomly initialised tiny model (char tokenizer of the corpus) saved as a model file."""
    from tinylm.model.files import save_model

    model = make_model(seed=1, vocab_size=char_tokenizer.vocab_size)
    path = tmp_path / "tiny.model"
    save_model(path, model, char_tokenizer, {"steps": 0})
    return path


def cli_env(tmp: Path, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["TINYLM_CACHE"] = str(tmp / ".tinylm-cache")
    env["XDG_CACHE_HOME"] = str(tmp / ".xdg-cache")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env["TINYLM_THREADS"] = env["OMP_NUM_THREADS"] = "1"  # see one_cpu_thread; several runs may share 2 cores
    env.pop("PYTHONWARNINGS", None)
    env.update(extra or {})
    return env


def cli_command(args: list[str]) -> list[str]:
    """["main.py", ...] runs the repo's classic main.py; anything else runs `python -m tinylm ...`."""
    if args and args[0] == "main.py":
        return [sys.executable, str(REPO / "main.py"), *args[1:]]
    return [sys.executable, "-m", "tinylm", *args]


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300) -> tuple[int, str, str]:
    """Run the CLI in a subprocess in `cwd`; returns (returncode, stdout, stderr)."""
    cwd = Path(cwd)
    res = subprocess.run(cli_command(list(args)), cwd=cwd, env=cli_env(cwd, env), capture_output=True,
                         text=True, encoding="utf-8", errors="replace", timeout=timeout, stdin=subprocess.DEVNULL)
    return res.returncode, res.stdout, res.stderr


@pytest.fixture
def cli():
    """The `run_cli(args, cwd, env=None)` helper as a fixture."""
    return run_cli


@pytest.fixture
def messages():
    """Log messages of the "tinylm" logger during the test."""
    got: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: got.append(record.getMessage())
    logger = logging.getLogger("tinylm")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield got
    logger.removeHandler(handler)
    logger.setLevel(old)
