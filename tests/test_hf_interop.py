"""HuggingFace interop against transformers as the reference: tinylm -> export -> transformers
gives the same logits and token ids; a transformers GPT-2 -> import -> tinylm gives the same
logits and ids, and exports back unchanged; a training checkpoint is a usable model.

Everything is made here (random weights, tokenizers trained on a small text): no downloads.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_text
from tinylm import cli
from tinylm.interop.checkpoint import load_any
from tinylm.interop.hf_export import export_hf
from tinylm.interop.hf_import import import_hf
from tinylm.model.files import load_model, save_model
from tinylm.model.gpt import GPT, GPTConfig
from tinylm.tokenizers import CharTokenizer
from tinylm.tokenizers.bpe import BPETokenizer, train_bpe
from tinylm.util.errors import UsageError

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

TEXT = make_text(6000, seed=11)
# spaces runs, tabs, newlines, punctuation, non-ASCII (2-, 3- and 4-byte UTF-8), a special's text
PROBE = "Hello,   world!\n\n  It's 2024: naïve café — 你好 🙂 <EOS> 1234567 tabs\there  \n end"
CHARS = TEXT + PROBE


def noisy(model: GPT, seed: int = 0) -> GPT:
    """Random weights far from init (biases and norms too), so a swapped or dropped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def logits_diff(ours: GPT, hf, vocab: int, T: int = 16) -> float:
    idx = torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours(idx)[0][..., :vocab] - hf(idx).logits).abs().max().item()


def load_hf(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def char_tok():
    return CharTokenizer.train(CHARS)


@pytest.fixture(scope="module")
def bpe_tok():
    return train_bpe(CHARS, 420, progress=False)


@pytest.fixture(scope="module")
def cl100k_style_tok():
    """cl100k's pre-split regex (possessive quantifiers, digits in threes) on a small trained table."""
    return train_bpe(CHARS, 420, pattern="cl100k", progress=False)


@pytest.fixture(scope="module")
def gpt2_style_tok(bpe_tok):
    """GPT-2's layout (ids = ranks, no merges kept, <|endoftext|> after the last rank) on a small table."""
    return BPETokenizer(bpe_tok.tokens, "gpt2", {"<|endoftext|>": len(bpe_tok.tokens)}, first_id=0,
                        eos="<|endoftext|>", kind="gpt2")


VARIANTS = {  # tinylm options -> the HF architecture that must express them
    "gpt2": ({}, "GPT2LMHeadModel"),
    "gpt2-no-bias": ({"bias": False}, "GPT2LMHeadModel"),
    "gpt2-untied-relu": ({"tie_weights": False, "activation": "relu"}, "GPT2LMHeadModel"),
    "gpt2-sinusoidal-relu2": ({"positions": "sinusoidal", "activation": "relu2", "d_ff": 48}, "GPT2LMHeadModel"),
    "neox-rope": ({"positions": "rope", "rope_base": 500.0}, "GPTNeoXForCausalLM"),
    "neox-rope-no-bias-silu-untied": ({"positions": "rope", "bias": False, "activation": "silu", "tie_weights": False},
                                      "GPTNeoXForCausalLM"),
    "stablelm-rope-swiglu": ({"positions": "rope", "bias": False, "activation": "swiglu"}, "StableLmForCausalLM"),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_export_logits_match_transformers(tmp_path, char_tok, name):
    options, arch = VARIANTS[name]
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=char_tok.vocab_size, context_size=16, n_layer=2, n_head=4, n_embd=32, **options)
    model = noisy(GPT(cfg))
    export_hf(model, char_tok, tmp_path / "hf")
    hf = load_hf(tmp_path / "hf")
    assert type(hf).__name__ == arch
    assert logits_diff(model, hf, char_tok.vocab_size) <= 1e-4


@pytest.mark.parametrize("name", VARIANTS)
def test_export_then_import_gives_the_same_model(tmp_path, gpt2_style_tok, name):
    options, _ = VARIANTS[name]
    tok = gpt2_style_tok
    cfg = GPTConfig(vocab_size=tok.vocab_size, context_size=16, n_layer=2, n_head=4, n_embd=32, **options)
    model = noisy(GPT(cfg), seed=2)
    if not cfg.bias:  # noisy() gives no-bias models no biases to move; all zero, they must come back as --no-bias
        assert not any(k.endswith(".bias") for k in model.state_dict())
    export_hf(model, tok, tmp_path / "hf")
    back, tok2, _ = import_hf(tmp_path / "hf")
    assert tok2.encode(PROBE) == tok.encode(PROBE)
    for field in ("n_layer", "n_head", "n_embd", "ff_size", "activation", "bias", "tie_weights", "rope_base"):
        assert getattr(back.cfg, field) == getattr(cfg, field), field
    idx = torch.randint(0, tok.vocab_size, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (back(idx)[0] - model(idx)[0][..., :tok.vocab_size]).abs().max().item() <= 1e-5


def test_import_neox_saved_by_transformers(tmp_path, hf_gpt2_dir):
    d, _, hf_tok = hf_gpt2_dir
    torch.manual_seed(5)
    conf = transformers.GPTNeoXConfig(vocab_size=len(hf_tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=16, use_parallel_residual=False,
                                      rotary_pct=1.0, hidden_act="gelu_pytorch_tanh")
    hf = transformers.GPTNeoXForCausalLM(conf).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    hf.save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((d / name).read_bytes())
    model, tok, _ = import_hf(tmp_path)
    assert model.cfg.positions == "rope" and not model.cfg.tie_weights
    assert logits_diff(model, hf, tok.vocab_size) <= 1e-4
    conf.use_parallel_residual = True  # Pythia's block: refused, naming the option
    transformers.GPTNeoXForCausalLM(conf).save_pretrained(tmp_path)
    with pytest.raises(UsageError, match="use_parallel_residual"):
        import_hf(tmp_path)


@pytest.mark.parametrize("options, flag", [({"qk_norm": True}, "--qk-norm"), ({"logit_softcap": 30.0}, "--softcap"),
                                           ({"activation": "swiglu", "positions": "rope"}, "swiglu"),
                                           ({"activation": "swiglu", "bias": False}, "--positions")])
def test_export_refusals_name_the_option(tmp_path, char_tok, options, flag):
    cfg = GPTConfig(vocab_size=char_tok.vocab_size, context_size=16, n_layer=1, n_head=2, n_embd=32, **options)
    with pytest.raises(UsageError, match=flag) as e:
        export_hf(GPT(cfg), char_tok, tmp_path / "hf")
    assert "\n" not in str(e.value) and not (tmp_path / "hf").exists()


@pytest.mark.parametrize("kind", ["char", "bpe", "bpe-cl100k", "gpt2"])
def test_autotokenizer_gives_tinylm_ids(tmp_path, request, kind):
    tok = request.getfixturevalue({"char": "char_tok", "bpe": "bpe_tok", "bpe-cl100k": "cl100k_style_tok",
                                   "gpt2": "gpt2_style_tok"}[kind])
    cfg = GPTConfig(vocab_size=tok.vocab_size, context_size=16, n_layer=1, n_head=2, n_embd=32)
    export_hf(GPT(cfg), tok, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in (PROBE, TEXT[:2000]):
        ids = tok.encode(text)
        assert hf_tok.encode(text) == ids
        assert hf_tok.decode(ids) == text == tok.decode(ids)
    assert hf_tok.eos_token_id == tok.eos_id


@pytest.fixture(scope="module")
def hf_gpt2_dir(tmp_path_factory):
    """A random GPT2LMHeadModel and a GPT-2-style tokenizer (vocab.json + merges.txt) trained with
    HF tokenizers, saved the way save_pretrained / a download leaves them."""
    from tokenizers import ByteLevelBPETokenizer

    d = tmp_path_factory.mktemp("hf-gpt2")
    bt = ByteLevelBPETokenizer()
    bt.train_from_iterator([TEXT], vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False)
    bt.save_model(str(d))
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(d)
    torch.manual_seed(0)
    conf = transformers.GPT2Config(vocab_size=len(hf_tok), n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                   bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(conf).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    hf.save_pretrained(d)
    assert {p.name for p in d.iterdir()} >= {"config.json", "model.safetensors", "vocab.json", "merges.txt"}
    return d, hf, hf_tok


def test_import_gpt2_matches_then_exports_back(tmp_path, hf_gpt2_dir):
    d, hf, hf_tok = hf_gpt2_dir
    model, tok, _ = import_hf(d)
    text = TEXT[:1500] + PROBE.replace("<EOS>", "")
    assert tok.encode(text) == hf_tok.encode(text)
    assert tok.decode(tok.encode(text)) == text
    assert logits_diff(model, hf, tok.vocab_size) <= 1e-4
    save_model(tmp_path / "gpt2.model", model, tok)  # a tinylm model file, then back out to HF
    loaded = load_model(tmp_path / "gpt2.model")
    export_hf(loaded.model.eval(), loaded.tokenizer, tmp_path / "back")
    back = load_hf(tmp_path / "back")
    assert type(back).__name__ == "GPT2LMHeadModel"
    assert logits_diff(loaded.model.eval(), hf, tok.vocab_size) <= 1e-4
    idx = torch.tensor([hf_tok.encode(TEXT[:200])[:16]])
    with torch.no_grad():
        assert (back(idx).logits - hf(idx).logits).abs().max().item() <= 1e-4
    back_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert back_tok.encode(text) == hf_tok.encode(text)
    # the exported folder (tokenizer.json, no vocab.json) imports again with the same ids and logits
    again, tok2, _ = import_hf(tmp_path / "back")
    assert tok2.encode(text) == tok.encode(text) and logits_diff(again, hf, tok.vocab_size) <= 1e-4


def test_import_untied_and_pytorch_bin(tmp_path, hf_gpt2_dir):
    d, _, hf_tok = hf_gpt2_dir
    torch.manual_seed(3)
    conf = transformers.GPT2Config(vocab_size=len(hf_tok), n_positions=16, n_embd=32, n_layer=1, n_head=2, n_inner=48,
                                   tie_word_embeddings=False, activation_function="relu")
    hf = transformers.GPT2LMHeadModel(conf).eval()
    with torch.no_grad():
        hf.lm_head.weight.add_(1.0)  # make sure the head really is its own tensor
    hf.save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((d / name).read_bytes())
    model, tok, _ = import_hf(tmp_path)
    assert not model.cfg.tie_weights and model.cfg.ff_size == 48 and model.cfg.activation == "relu"
    assert logits_diff(model, hf, tok.vocab_size) <= 1e-4
    # the layout of OpenAI's original gpt2 upload: no "transformer." prefix, causal-mask buffers
    # beside the weights, in pytorch_model.bin (read with weights_only=True)
    sd = {k.removeprefix("transformer."): v.clone() for k, v in hf.state_dict().items()}
    sd.update({f"h.{i}.attn.bias": torch.tril(torch.ones(1, 1, 16, 16)) for i in range(conf.n_layer)})
    sd.update({f"h.{i}.attn.masked_bias": torch.tensor(-1e4) for i in range(conf.n_layer)})
    (tmp_path / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    model2, _, _ = import_hf(tmp_path)
    assert logits_diff(model2, hf, tok.vocab_size) <= 1e-4


def test_imported_model_generates_evaluates_finetunes(tmp_path, hf_gpt2_dir, capsys):
    d, _, _ = hf_gpt2_dir
    (tmp_path / "data.txt").write_text(TEXT)
    assert cli.main(["import", "--format", "hf", str(d), "-o", str(tmp_path / "g.model")]) == 0
    assert cli.main(["generate", "-m", str(tmp_path / "g.model"), "-p", "the king", "-n", "5", "--seed", "1"]) == 0
    assert cli.main(["eval", "-m", str(tmp_path / "g.model"), "-d", str(tmp_path / "data.txt")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrote ") and "\nthe king" in out and "perplexity" in out
    assert cli.main(["train", "-m", str(tmp_path / "g.model"), "-d", str(tmp_path / "data.txt"), "-o", str(tmp_path / "ft.model"),
                     "--steps", "2", "--batch-size", "2", "--device", "cpu"]) == 0
    ft = load_model(tmp_path / "ft.model")
    assert ft.model.cfg.vocab_size == ft.tokenizer.vocab_size == 400 and ft.tokenizer.kind == "gpt2"


def test_checkpoint_generates_evaluates_exports(tmp_path, capsys):
    (tmp_path / "data.txt").write_text(TEXT)
    out = tmp_path / "run.model"
    assert cli.main(["train", "-d", str(tmp_path / "data.txt"), "-o", str(out), "--layers", "1", "--embd", "32", "--heads", "2",
                     "--context", "16", "--steps", "2", "--batch-size", "2", "--checkpoint-every", "1", "--ema", "0.9",
                     "--device", "cpu"]) == 0
    ckpt = tmp_path / "run.model.ckpt" / "step-00000002.ckpt"
    assert cli.main(["generate", "-m", str(ckpt), "-p", "the", "-n", "5", "--seed", "1"]) == 0
    assert cli.main(["eval", "-m", str(ckpt), "-d", str(tmp_path / "data.txt")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("the") and "perplexity" in text
    assert cli.main(["export", "-m", str(ckpt), "--format", "tinylm", "-o", str(tmp_path / "ck.model")]) == 0
    from_ckpt, from_file, saved = load_any(ckpt), load_model(tmp_path / "ck.model"), load_model(out)
    idx = torch.randint(0, from_file.tokenizer.vocab_size, (1, 16))
    with torch.no_grad():
        a, b, c = (m.model.eval()(idx)[0] for m in (from_ckpt, from_file, saved))
    assert torch.equal(a, b)
    assert torch.allclose(a, c)  # the run's own model file: the same (EMA-averaged) weights at its last step
    assert cli.main(["export", "-m", str(ckpt), "--format", "hf", "-o", str(tmp_path / "hf")]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "gpt2"
