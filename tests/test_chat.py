"""Q&A chat: the format and its special tokens, the JSON data file and its errors, the chat loop
in-process (EOS ends an answer, errors do not end the session), and scripted `tinylm chat`
sessions in a subprocess with stdin piped: exit, EOF, and Ctrl-C stopping only an answer."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import time

import pytest
import torch

from conftest import cli_command, cli_env, make_model, make_text
from tinylm.generate.chat import chat, format_qa, load_qa_json
from tinylm.model.files import save_model
from tinylm.util.errors import UsageError
from tinylm.generate.engine import SamplingConfig
from tinylm.generate.text import generate_text
from tinylm.tokenizers import CharTokenizer
from tinylm.tokenizers.bpe import train_bpe

EOS = 3


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer.train(make_text(3000) + "QA:?")


def rigged(tok, eos_logit: float):
    """A model whose next-token logits are fixed: 0 everywhere and `eos_logit` for EOS. Large ->
    it answers EOS at once; very negative -> it never stops."""
    model = make_model(seed=0, vocab_size=tok.vocab_size, tie_weights=False, context_size=32)
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[EOS].fill_(eos_logit / model.cfg.n_embd)
    return model


# ---------------------------------------------------------------- format

def test_format_qa_training_and_prompt_forms():
    assert format_qa("Why?", "Because.") == "<BOS>Question: Why?\nAnswer: Because.<EOS>"
    assert format_qa("Why?") == "<BOS>Question: Why?\nAnswer: "


def test_chat_prompts_encode_bos_and_eos_as_special_ids(tok):
    bpe = train_bpe(make_text(2000), 300, progress=False)
    for t in (tok, bpe):
        ids = t.encode(format_qa("the king?", "the sea."), allow_special=True)
        assert ids[0] == 2 and ids[-1] == EOS and t.bos_id == 2 and t.eos_id == EOS
    assert 2 not in bpe.encode(format_qa("the king?"))  # without allow_special "<BOS>" is plain text


# ---------------------------------------------------------------- the JSON file

def test_load_qa_json_reads_pairs_and_ignores_optional_fields(tmp_path):
    p = tmp_path / "qa.json"
    p.write_text(json.dumps([{"question": "Q1?", "answer": "A1.", "id": 7, "category": "x"},
                             {"question": "Q2 é?", "answer": "A2 🎉"}]), encoding="utf-8")
    assert load_qa_json(p) == [("Q1?", "A1."), ("Q2 é?", "A2 🎉")]


@pytest.mark.parametrize("content, message", [
    ("[{\"question\": \"a\", \"answer\": }]", "not valid JSON"),
    ("{\"question\": \"a\", \"answer\": \"b\"}", "JSON list"),
    ("[]", "empty list"),
    ("[{\"question\": \"a\", \"answer\": \"b\"}, {\"question\": \"c\"}]", "item 1 has no \"answer\""),
    ("[{\"answer\": \"b\"}]", "item 0 has no \"question\""),
    ("[{\"question\": 5, \"answer\": \"b\"}]", "must be a string"),
    ("[{\"question\": \"  \", \"answer\": \"b\"}]", "is empty"),
    ("[[\"a\", \"b\"]]", "not an object"),
])
def test_load_qa_json_errors_are_one_line_usage_errors(tmp_path, content, message):
    p = tmp_path / "qa.json"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match=message) as e:
        load_qa_json(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_load_qa_json_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_qa_json(tmp_path / "nope.json")
    bad = tmp_path / "latin1.json"
    bad.write_bytes("[{\"question\": \"caf\xe9\", \"answer\": \"b\"}]".encode("latin-1"))
    with pytest.raises(UsageError, match="UTF-8"):
        load_qa_json(bad)


# ---------------------------------------------------------------- the loop, in-process

def run_chat(model, tok, lines: str, **kw) -> tuple[str, str, int]:
    out, err = io.StringIO(), io.StringIO()
    n = chat(model, tok, kw.pop("cfg", SamplingConfig(max_new_tokens=20, seed=0)), stdin=io.StringIO(lines),
             stdout=out, stderr=err, **kw)
    return out.getvalue(), err.getvalue(), n


def test_an_answer_ends_at_eos(tok):
    out, _, n = run_chat(rigged(tok, eos_logit=50.0), tok, "the king?\nthe sea?\n")
    assert out == "> the king?\n\n> the sea?\n\n" and n == 2  # EOS first: empty answers


def test_answers_are_what_generate_text_gives_for_the_formatted_question(tok):
    model = make_model(seed=3, vocab_size=tok.vocab_size, context_size=32)
    cfg = SamplingConfig(max_new_tokens=15, temperature=0)
    out, _, _ = run_chat(model, tok, "\n  \nthe king?\nexit\nnot asked?\n", cfg=cfg)
    want = generate_text(model, tok, format_qa("the king?"), cfg, allow_special=True)
    assert out == f"> the king?\n{want}\n"  # blank lines skipped, nothing after `exit`


def test_a_bad_question_is_reported_and_the_session_goes_on(tok):
    out, err, n = run_chat(rigged(tok, 50.0), tok, "what is €?\nthe king?\n")
    assert "error: " in err and "'€'" in err and n == 1 and out.endswith("> the king?\n\n")


# ---------------------------------------------------------------- `tinylm chat` in a subprocess

@pytest.fixture
def model_path(tmp_path, tok):
    def save(model) -> str:
        path = tmp_path / "qa.model"
        save_model(path, model, tok, {})
        return str(path)
    return save


def test_scripted_chat_session_exits_on_exit_and_on_eof(tmp_path, tok, model_path):
    path = model_path(rigged(tok, 50.0))
    for script in ("the king?\nthe sea?\nexit\n", "the king?\nthe sea?\n"):
        res = subprocess.run(cli_command(["chat", "-m", path, "--seed", "0"]), input=script, capture_output=True,
                             text=True, encoding="utf-8", cwd=tmp_path, env=cli_env(tmp_path), timeout=120)
        assert res.returncode == 0, res.stderr
        assert res.stdout == "> the king?\n\n> the sea?\n\n"


def test_ctrl_c_stops_an_answer_not_the_program(tmp_path, tok, model_path):
    path = model_path(rigged(tok, -1e4))  # never says EOS: the answer runs until interrupted
    proc = subprocess.Popen(cli_command(["chat", "-m", path, "-n", "1000000", "--temperature", "1"]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            env=cli_env(tmp_path))
    try:
        proc.stdin.write("the king?\n".encode())
        proc.stdin.flush()
        seen = b""
        deadline = time.monotonic() + 60
        while len(seen) < len(b"> the king?\n") + 50 and time.monotonic() < deadline:  # the answer is streaming
            if select.select([proc.stdout], [], [], 1.0)[0]:
                seen += os.read(proc.stdout.fileno(), 4096)
        assert seen.startswith(b"> the king?\n"), seen
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(input=b"exit\n", timeout=120)  # still reading questions
    finally:
        proc.kill()
    text = (seen + out).decode("utf-8", errors="replace")
    assert proc.returncode == 0, err.decode(errors="replace")
    assert text.endswith(" [stopped]\n")
