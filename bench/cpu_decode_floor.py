"""How close CPU decoding of the char model is to its memory-bandwidth floor.

    .venv/bin/python bench/cpu_decode_floor.py

Times (1) one step of tinylm's eager cached decoding (batch 1, fp32, one thread), (2) the model's
Linear layers alone, each once, back to back, as a one-row product: the weight bytes every step
must read, at the rate this core streams them from memory, with one and with two threads, and
(3) prints torch.profiler's op table for 50 decoding steps.
"""

import time

import torch

from tinylm.generate.engine import Engine, SamplingConfig
from tinylm.model.gpt import GPT, GPTConfig


def linears_alone(model, threads: int, reps: int = 50) -> float:
    torch.set_num_threads(threads)
    lin = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = {m: torch.randn(1, m.in_features) for m in lin}
    with torch.inference_mode():
        for _ in range(3):
            for m in lin:
                m(x[m])
        t = time.perf_counter()
        for _ in range(reps):
            for m in lin:
                m(x[m])
    return (time.perf_counter() - t) / reps


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, context_size=256, vocab_size=65)).eval()
    engine = Engine(model, 1, 65, SamplingConfig(max_new_tokens=200, temperature=0), decode="eager")
    prompt = torch.randint(0, 65, (1, 10))
    with torch.inference_mode():
        engine(prompt)
        t = time.perf_counter()
        engine(prompt)
        step = (time.perf_counter() - t) / 200
    nbytes = sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, torch.nn.Linear))
    print(f"decoding step: {step * 1e3:.2f} ms")
    for threads in (1, 2, 1, 2):
        g = linears_alone(model, threads)
        print(f"Linear layers alone, {threads} thread(s): {g * 1e3:.2f} ms for {nbytes / 1e6:.1f} MB = {nbytes / g / 1e9:.1f} GB/s")
    torch.set_num_threads(1)
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        engine(prompt, max_new_tokens=50)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=40))


if __name__ == "__main__":
    main()
