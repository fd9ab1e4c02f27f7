"""Text-level generation: streaming (incremental UTF-8, with tokenizers whose pieces split
characters) concatenates to the returned text, stop strings cut exactly, several samples, and
the `tinylm generate` flags end to end (in-process) including bad input -> exit code 2."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import make_model
from tinylm import cli
from tinylm.util.errors import UsageError
from tinylm.generate.engine import SamplingConfig, generate
from tinylm.generate.text import TextStream, cut_at_stop, generate_text, generate_texts
from tinylm.tokenizers import CharTokenizer
from tinylm.tokenizers.bpe import train_bpe

WIDE = "héllo wörld, 日本語のテキスト 🎉🙂 naïve café ß Ω ≈ 中文 😀!\n" * 4


@pytest.fixture(scope="module")
def char_tok() -> CharTokenizer:
    return CharTokenizer.train(WIDE)


@pytest.fixture(scope="module")
def bpe_tok():
    return train_bpe(WIDE, 4 + 256 + 20, progress=False)  # mostly single bytes: pieces split characters


def model_for(tok, seed: int = 0, **kw):
    return make_model(seed=seed, vocab_size=tok.vocab_size, context_size=24, **kw)


def generated_ids(model, tok, prompt: str, cfg: SamplingConfig) -> list[int]:
    """The ids the engine produces for `prompt`, up to (not including) EOS: the reference text source."""
    ids = tok.encode(prompt)
    out = generate(model, torch.tensor([ids]), cfg, tok.vocab_size, eos_id=tok.eos_id)[0, len(ids):].tolist()
    return out[:out.index(tok.eos_id)] if tok.eos_id in out else out


# ---------------------------------------------------------------- streaming

@pytest.mark.parametrize("which", ["char", "bpe"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_pieces_concatenate_to_the_returned_text_and_to_the_decoded_ids(which, seed, char_tok, bpe_tok):
    tok = char_tok if which == "char" else bpe_tok
    model = model_for(tok, seed=seed)
    cfg = SamplingConfig(max_new_tokens=80, temperature=1.0, seed=seed)
    pieces: list[str] = []
    text = generate_text(model, tok, "日本 🎉", cfg, on_text=pieces.append)
    assert "".join(pieces) == text == tok.decode(generated_ids(model, tok, "日本 🎉", cfg))
    assert len(pieces) > 1 and "" not in pieces


def test_bytes_of_one_character_wait_until_it_is_complete(bpe_tok):
    s = TextStream(bpe_tok)
    emoji = "🎉".encode()  # four byte tokens
    out = [s.push(_byte_id(bpe_tok, b)) for b in emoji]
    assert out == ["", "", "", "🎉"]
    assert s.push(_byte_id(bpe_tok, 0xE6)) == "" and s.close() == "\ufffd"  # a dangling lead byte at the end


def _byte_id(tok, byte: int) -> int:
    return tok.ranks[bytes([byte])]


def test_stream_writes_the_prompt_then_the_text(char_tok, capsys):
    import sys

    model = model_for(char_tok)
    text = generate_text(model, char_tok, "café", SamplingConfig(max_new_tokens=20, seed=0), stream=sys.stdout, echo_prompt=True)
    assert capsys.readouterr().out == "café" + text


# ---------------------------------------------------------------- stop strings

class FakeTok:
    """Each id decodes to one fixed string, so a test can script the pieces exactly."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def decode_bytes(self, ids):
        return "".join(self.pieces[i] for i in ids).encode()


def stream_all(pieces: list[str], stops: list[str]) -> tuple[list[str], bool]:
    tok = FakeTok(pieces)
    s = TextStream(tok, stops)
    out = [s.push(i) for i in range(len(pieces))]
    return out + [s.close()], s.stopped


def test_stop_strings_cut_exactly_and_hold_back_only_what_could_be_a_stop():
    out, _ = stream_all(["a", "b", "\n", "\n", "c"], ["\n\n"])
    assert out == ["a", "b", "", "", "", ""]  # "\n" waits; the second one completes the stop: nothing after "ab"
    out, _ = stream_all(["a", "\n", "c", "\n"], ["\n\n"])
    assert out == ["a", "", "\nc", "", "\n"]  # a held "\n" is released when it is not a stop after all
    assert "".join(stream_all(["x\n", "\ny"], ["\n\n"])[0]) == "x"  # straddling two pieces
    assert "".join(stream_all(["abcSTOPdef", "g"], ["STOP"])[0]) == "abc"  # inside one piece
    assert "".join(stream_all(["ab", "cd"], ["zz", "bc", "d"])[0]) == "a"  # the earliest of several
    assert cut_at_stop("ab\n\ncd", ["\n\n", "c"]) == ("ab", True)


def test_random_pieces_and_stops_stream_to_the_cut_text():
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice("ab\n") for _ in range(rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 8))))
        pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        stops = ["".join(rng.choice("ab\n") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        out, _ = stream_all(pieces, stops)
        assert "".join(out) == generation_would_end_with(pieces, stops), (pieces, stops)


def generation_would_end_with(pieces: list[str], stops: list[str]) -> str:
    """The reference: generation ends at the first piece after which some stop string is in the
    text, and the text is cut before the earliest one present then."""
    text = ""
    for piece in pieces:
        text += piece
        cut, found = cut_at_stop(text, stops)
        if found:
            return cut
    return text


def test_generation_with_a_stop_string_is_the_free_text_cut_before_it(char_tok):
    model = model_for(char_tok, seed=3)
    cfg = SamplingConfig(max_new_tokens=120, temperature=1.0, seed=4)
    free = generate_text(model, char_tok, "naïve", cfg)
    stop = free[30:32]
    pieces: list[str] = []
    cut = generate_text(model, char_tok, "naïve", cfg, stop=[stop], on_text=pieces.append)
    assert cut == free[:free.index(stop)] == "".join(pieces)
    assert generate_text(model, char_tok, "naïve", cfg, stop=["never there ∑∑"]) == free


def test_several_samples_each_stop_on_their_own_and_match_their_seed_alone(char_tok):
    model = model_for(char_tok, seed=5)
    cfg = SamplingConfig(max_new_tokens=60, temperature=1.0, seed=10)
    texts = generate_texts(model, char_tok, "wörld", cfg, num_samples=3, stop=["o"])
    for i, text in enumerate(texts):
        alone = generate_text(model, char_tok, "wörld", SamplingConfig(**{**vars(cfg), "seed": 10 + i}), stop=["o"])
        assert text == alone and "o" not in text
    assert generate_texts(model, char_tok, "wörld", cfg, num_samples=3) == [
        generate_text(model, char_tok, "wörld", SamplingConfig(**{**vars(cfg), "seed": 10 + i})) for i in range(3)]


def test_beam_search_text_obeys_stop_strings(char_tok):
    model = model_for(char_tok, seed=6)
    cfg = SamplingConfig(max_new_tokens=30)
    free = generate_text(model, char_tok, "café", cfg, beams=3)
    if len(free) > 5:
        assert generate_text(model, char_tok, "café", cfg, beams=3, stop=[free[3:5]]) == free[:free.index(free[3:5])]


def test_bad_text_settings(char_tok):
    model = model_for(char_tok)
    cfg = SamplingConfig(max_new_tokens=5)
    with pytest.raises(UsageError, match="--num-samples"):
        generate_texts(model, char_tok, "café", cfg, num_samples=0)
    with pytest.raises(UsageError, match="--stop"):
        generate_text(model, char_tok, "café", cfg, stop=[""])
    with pytest.raises(UsageError, match="empty"):
        generate_text(model, char_tok, "", cfg)
    with pytest.raises(UsageError, match="vocabulary lacks"):
        generate_text(model, char_tok, "zzz€", cfg)


# ---------------------------------------------------------------- the CLI (in-process)

def test_generate_num_samples_prints_each_sample_with_its_seed(model_file, capsys):
    assert cli.main(["generate", "-m", str(model_file), "-p", "the", "-n", "20", "--seed", "5", "--num-samples", "3"]) == 0
    out = capsys.readouterr().out
    blocks = out.split("--- sample ")[1:]
    assert [b.splitlines()[0] for b in blocks] == [f"{i}/3 (seed {4 + i}) ---" for i in (1, 2, 3)]
    for i, block in enumerate(blocks):
        assert cli.main(["generate", "-m", str(model_file), "-p", "the", "-n", "20", "--seed", str(5 + i)]) == 0
        alone = capsys.readouterr().out
        assert block.split("---\n", 1)[1] == alone


@pytest.mark.parametrize("flags, message", [
    (["-n", "0"], "--tokens"), (["-n", "-5"], "--tokens"), (["--temperature", "-1"], "--temperature"),
    (["--top-k", "-1"], "--top-k"), (["--top-p", "0"], "--top-p"), (["--top-p", "1.5"], "--top-p"),
    (["--beams", "0"], "--beams"), (["--num-samples", "0"], "--num-samples"), (["--stop", ""], "--stop"),
    (["--threads", "-1"], "--threads"), (["--window", "roll"], "RoPE"), (["--beams", "2", "--num-samples", "2"], "beam"),
    (["-p", "the €"], "vocabulary lacks"),
])
def test_bad_generation_input_is_one_line_and_exit_code_2(model_file, capsys, flags, message):
    args = ["generate", "-m", str(model_file), "-p", "the", *flags]
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert captured.out == ""  # nothing half-printed before the error
