"""Reduced-precision CPU weights (cpu_weights.py) against the fp32 model they came from (the
reference): logits within each kind's error bound, cached decoding against the converted model's
own full forward, batch rows independent of each other, and the bad-input errors."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_model
from tinylm import cli
from tinylm.kernels import cpu_weights
from tinylm.kernels.cpu_weights import Fp16Linear, Int8Linear, check_kind, convert_linear_weights, quantize_rows
from tinylm.util.errors import UsageError
from tinylm.generate.engine import Decoder, Engine, SamplingConfig

V = 40  # tiny_config's vocabulary
KINDS = ["fp16", "int8"]
# |logits - fp32 logits| / |fp32 logits| (centred) may not exceed this; ~10x what the tiny models
# measure (fp16 ~1e-4, int8 ~3e-3), far below the ~1 of a broken conversion.
REL_BOUND = {"fp16": 1e-3, "int8": 3e-2}
VARIANTS = [dict(), dict(activation="swiglu", bias=False, tie_weights=False), dict(positions="rope")]
IDS = ["gpt2", "swiglu-nobias-untied", "rope"]


def model_with_biases(seed: int, **variant):
    """make_model, but with non-zero Linear biases (GPT init zeroes them, which would hide a lost bias)."""
    model = make_model(seed=seed, **variant)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.bias is not None:
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
    return model


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def converted(model, kind: str):
    m = copy.deepcopy(model)
    convert_linear_weights(m, kind)
    return m


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    centred = ref - ref.mean(-1, keepdim=True)  # a shift of all logits changes no probability
    return ((out - ref).norm() / centred.norm()).item()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_converted_logits_stay_within_the_kinds_error_bound(kind, variant):
    model = model_with_biases(seed=2, **variant)
    idx = tokens(3, model.cfg.context_size)
    with torch.no_grad():
        ref, _ = model(idx)  # (B, T, V) fp32
        out, _ = converted(model, kind)(idx)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert rel_error(out, ref) < REL_BOUND[kind]
    agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()  # teacher-forced greedy choices
    assert agree >= (0.99 if kind == "fp16" else 0.9)


@pytest.mark.parametrize("kind", KINDS)
def test_every_linear_but_the_tied_head_is_converted(kind):
    tied, untied = make_model(**VARIANTS[0]), make_model(**VARIANTS[1])
    layer = {"fp16": Fp16Linear, "int8": Int8Linear}[kind]
    assert convert_linear_weights(tied, kind) == 2 * 4  # qkv, proj, fc, proj per block
    assert isinstance(tied.lm_head, torch.nn.Linear) and tied.lm_head.weight is tied.wte.weight
    assert convert_linear_weights(untied, kind) == 2 * 5 + 1  # + the swiglu gate, + the head
    assert isinstance(untied.lm_head, layer)
    assert convert_linear_weights(untied, kind) == 0  # nothing left to convert


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_cached_decoding_matches_the_converted_models_full_forward(kind, variant):
    model = converted(model_with_biases(seed=3, **variant), kind)
    T = model.cfg.context_size
    idx = tokens(2, T, seed=1)
    # int8: a CPU whose kernel sums one row and many rows in different orders may round a bf16
    # output differently (~1e-4 at these logits); here they agree to ~1e-7. A wrong cache is off by ~1e-1.
    atol = 1e-5 if kind == "fp16" else 1e-3
    with torch.no_grad():
        full, _ = model(idx)  # (B, T, V)
        dec = Decoder(model, 2, V, window="slide")  # runs cpu_weight_layout: must leave the converted layers alone
        assert not any(isinstance(m, torch.nn.Linear) and m.weight is not model.wte.weight for m in model.modules())
        torch.testing.assert_close(dec.prefill(idx[:, :5]), full[:, 4, :V], rtol=0, atol=atol)
        for n in range(6, T + 1):
            torch.testing.assert_close(dec.step(idx[:, :n]), full[:, n - 1, :V], rtol=0, atol=atol)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_rows_decode_as_they_would_alone(kind):
    model = converted(model_with_biases(seed=4), kind)
    prompts = tokens(3, 4, seed=2)
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.8, seed=7)
    with torch.no_grad():
        batch = Engine(model, 3, V, cfg)(prompts)
        for b in range(3):
            alone = Engine(model, 1, V, SamplingConfig(max_new_tokens=12, temperature=0.8, seed=7 + b))(prompts[b:b + 1])
            assert torch.equal(batch[b], alone[0])


def test_quantize_rows_worked_example_and_error_bound():
    q, s = quantize_rows(torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]]))
    assert q.dtype == torch.int8 and s.dtype == torch.bfloat16
    assert q.tolist() == [[64, -127, 32], [0, 0, 0]]
    w = torch.randn(64, 96)
    q, s = quantize_rows(w)
    step = s.float()[:, None]  # (out, 1)
    assert ((q.float() * step - w).abs() <= step / 2 + 1e-6).all()


def test_fp32_is_a_no_op():
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert convert_linear_weights(model, "fp32") == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_kinds_and_devices_are_usage_errors(monkeypatch):
    with pytest.raises(UsageError, match="--weights must be one of fp32, fp16, int8, got 'int4'"):
        convert_linear_weights(make_model(), "int4")
    with pytest.raises(UsageError, match="--weights int8 is a CPU decoding option.*--device cpu"):
        check_kind("int8", "cuda")
    check_kind("fp32", "cuda")  # fp32 is what every device runs
    monkeypatch.delattr(torch, "_weight_int8pack_mm")
    with pytest.raises(UsageError, match="--weights int8 needs torch._weight_int8pack_mm"):
        check_kind("int8")
    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines", property(lambda self: ["qnnpack"]))
    with pytest.raises(UsageError, match="--weights fp16 needs fbgemm"):
        check_kind("fp16")


def test_cli_weights_flag(model_file, capsys, monkeypatch):
    converted_layers = []  # what the CLI converted: (kind, layers)

    def spy(model, kind):
        converted_layers.append((kind, convert_linear_weights(model, kind)))
        return converted_layers[-1][1]

    monkeypatch.setattr(cpu_weights, "convert_linear_weights", spy)
    # parse + run_guarded rather than cli.main: main's setup_logging would attach a stderr handler
    # for the rest of the session, and later tests count stderr lines
    argv = ["generate", "-m", str(model_file), "-p", "the", "-n", "8", "--seed", "0", "--device", "cpu"]
    args = cli.build_parser().parse_args(argv + ["--weights", "int8"])
    assert cli.run_guarded(cli.COMMANDS[args.command], args) == 0
    assert capsys.readouterr().out.startswith("the")
    assert converted_layers == [("int8", 2 * 4)]  # the tiny model's blocks; its head is tied
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(argv + ["--weights", "int4"])
    assert e.value.code == 2
    assert "argument --weights: invalid choice: 'int4'" in capsys.readouterr().err


@pytest.mark.parametrize("kind", KINDS)
def test_converting_after_a_decoder_relaid_the_weights(kind):
    # A Decoder stores CPU Linear weights transposed in memory (cpu_weight_layout); converting
    # afterwards must give what converting first gives.
    model = model_with_biases(seed=5)
    first = converted(model, kind)
    later = copy.deepcopy(model)
    Decoder(later, 1, V)  # re-lays the weights
    convert_linear_weights(later, kind)
    x = tokens(2, 6, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(later(x)[0], first(x)[0], rtol=0, atol=0)


@pytest.mark.skipif(not hasattr(torch, "_weight_int8pack_mm"), reason="torch build without the int8 op")
def test_int8_compiled_decoding_gives_the_int8_eager_tokens():
    # --weights int8 --decode compile: the int8 products as extern calls of inductor's C++ wrapper
    model = model_with_biases(31)
    convert_linear_weights(model, "int8")
    cfg = SamplingConfig(max_new_tokens=20, temperature=0)
    prompt = tokens(1, 5, seed=3)
    eng = Engine(model, 1, V, cfg, decode="compile")
    assert eng.mode == "compile"
    assert torch.equal(eng(prompt), Engine(model, 1, V, cfg, decode="eager")(prompt))


@pytest.mark.skipif("fbgemm" not in torch.backends.quantized.supported_engines, reason="torch build without fbgemm")
def test_fp16_weights_refuse_to_compile():
    model = make_model(seed=32)
    convert_linear_weights(model, "fp16")
    with pytest.raises(UsageError, match="--decode compile cannot trace --weights fp16"):
        Engine(model, 1, V, SamplingConfig(max_new_tokens=4), decode="compile")
