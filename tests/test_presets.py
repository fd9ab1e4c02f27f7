"""How presets pick the GPU speed path when --compile is left on auto (presets.choose_speed)."""

import pytest

from tinylm.presets import build_configs, choose_speed


@pytest.mark.parametrize("model_kw, train_kw, device, want", [
    (dict(n_embd=384, n_layer=6), {}, "cuda", ("off", True)),  # small: CUDA graph of eager kernels
    (dict(n_embd=768, n_layer=12), {}, "cuda", ("model", True)),  # 85M block params: compiled + graph
    (dict(n_embd=768, n_layer=12), dict(optimizer="muon"), "cuda", ("model", False)),  # no graph with Muon
    (dict(n_embd=384, n_layer=6), dict(optimizer="muon"), "cuda", ("model", False)),
    (dict(n_embd=768, n_layer=12), {}, "cpu", ("off", None)),
    (dict(n_embd=768, n_layer=12), dict(compile="off"), "cuda", ("off", None)),  # the user's choice stands
    (dict(n_embd=768, n_layer=12), dict(cuda_graph=True), "cuda", ("model", True)),
])
def test_choose_speed(model_kw, train_kw, device, want):
    kw = dict(train_kw)
    choose_speed(model_kw, kw, device)
    assert (kw.get("compile"), kw.get("cuda_graph")) == want


def test_speedrun_presets_on_cuda_use_the_graph():
    for name in ("speedrun", "speedrun60"):
        _, cfg = build_configs(name, {}, {}, "cuda")
        assert cfg.cuda_graph and cfg.compile == "off"
