"""Load test for `tinylm serve`: 1, 8, 32 (or --clients) concurrent streaming clients against a
server this script starts on a loopback port -> aggregate tokens/s, p50/p99 time to first
token, p50 inter-token latency.

The load generator is its own: asyncio streams speaking HTTP/1.1 by hand (no HTTP client
package is needed on the machine; the server side needs tinylm's `serve` extra). Bounded: each
client sends --requests requests one after another, each level stops after --time-limit
seconds, and only 127.0.0.1 is contacted. Every request asks for exactly --tokens tokens (EOS
is banned through logit_bias, so no request ends early) with its own seed.

The model is random weights of a named shape, written to a temporary folder (no network):
  char: 6 layers, 6 heads, 384 wide, context 256, vocab 65 (the tiny-Shakespeare char model)
  gpt2: GPT-2 124M, 12 layers, 12 heads, 768 wide, context 1024, vocab 50257 (a character
        vocabulary of that size stands in for GPT-2's BPE, which would need its rank file)
or -m MODEL serves a model file of your own.

  python bench/serve_load.py --shape char --device cpu --clients 1,8,32
  python bench/serve_load.py --shape gpt2 --device cuda --clients 1,8,32 --tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"char": dict(n_layer=6, n_head=6, n_embd=384, context_size=256, vocab=65),
          "gpt2": dict(n_layer=12, n_head=12, n_embd=768, context_size=1024, vocab=50257)}


def write_model(shape: str, folder: Path) -> Path:
    sys.path.insert(0, str(REPO))
    import torch

    from tinylm.model.files import save_model
    from tinylm.model.gpt import GPT, GPTConfig
    from tinylm.tokenizers import CharTokenizer

    s = SHAPES[shape]
    n_chars = s["vocab"] - 4  # the char tokenizer adds its special tokens
    # letters and punctuation (61 + 4 specials = 65, tiny Shakespeare's size), or for GPT-2's vocabulary
    # size ASCII letters and space, then characters from U+10000 on (past the surrogates), one each
    alphabet = (string.ascii_letters + " .,;:!?'\n")[:n_chars] if n_chars <= 61 else \
        string.ascii_letters + " " + "".join(chr(c) for c in range(0x10000, 0x10000 + n_chars - 53))
    tok = CharTokenizer.train(alphabet)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, context_size=s["context_size"], n_layer=s["n_layer"],
                    n_head=s["n_head"], n_embd=s["n_embd"], dropout=0.0)
    path = folder / f"{shape}.model"
    save_model(path, GPT(cfg), tok, {"steps": 0})
    return path, tok


def start_server(model: Path, device: str, slots: int, tokens: int, prefill_rows: int) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "tinylm", "serve", "-m", str(model), "--port", "0", "--device", device,
                             "--slots", str(slots), "--prefill-rows", str(prefill_rows), "--queue", "256", "--max-tokens", str(max(tokens, 16))],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    line = proc.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()[-2000:]}")
    return proc, int(m.group(1))


async def stream_request(port: int, body: dict) -> tuple[float, list[float], int]:
    """POST /v1/completions with stream: (seconds to the first text, arrival times of every text
    chunk, completion tokens from the final usage chunk)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"server answered {status!r}: {(await reader.read(2000))!r}")
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        chunked |= line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
    arrivals, usage, buf = [], 0, b""
    while True:
        if chunked:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                break
            piece = await reader.readexactly(size + 2)  # the chunk and its CRLF
            buf += piece[:-2]
        else:
            piece = await reader.read(65536)
            if not piece:
                break
            buf += piece
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            chunk = json.loads(event[6:])
            if "error" in chunk:
                raise RuntimeError(f"the server failed the request: {chunk['error']['message']}")
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                arrivals.append(time.perf_counter())
    writer.close()
    return arrivals[0] - t0 if arrivals else float("nan"), arrivals, usage


async def level(port: int, clients: int, requests: int, tokens: int, time_limit: float, eos: int) -> dict:
    ttft, itl, total = [], [], 0
    deadline = time.perf_counter() + time_limit

    async def client(c: int) -> None:
        nonlocal total
        for r in range(requests):
            if time.perf_counter() > deadline:
                return
            body = {"prompt": "The quick brown fox jumps", "max_tokens": tokens, "stream": True, "temperature": 1.0,
                    "seed": 1000 * c + r, "logit_bias": {str(eos): -100}, "stream_options": {"include_usage": True}}
            first, arrivals, n = await stream_request(port, body)
            ttft.append(first)
            itl.extend(b - a for a, b in zip(arrivals, arrivals[1:]))
            total += n

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] if len(xs) > 1 else (xs[0] if xs else float("nan"))  # noqa: E731
    return {"clients": clients, "requests": len(ttft), "tokens": total, "seconds": wall, "tokens_per_s": total / wall,
            "ttft_p50_ms": 1e3 * statistics.median(ttft), "ttft_p99_ms": 1e3 * q(ttft, 99),
            "itl_p50_ms": 1e3 * statistics.median(itl) if itl else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="char", help="random model of this shape (default char)")
    ap.add_argument("-m", "--model", help="serve this model file instead of a random one")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="the server's device (default cpu)")
    ap.add_argument("--clients", default="1,8,32", help="concurrency levels, comma-separated (default 1,8,32)")
    ap.add_argument("--requests", type=int, default=4, help="requests per client per level (default 4)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per request (default 64)")
    ap.add_argument("--time-limit", type=float, default=60, help="seconds per level at most (default 60)")
    ap.add_argument("--slots", type=int, default=32, help="the server's --slots (default 32)")
    ap.add_argument("--prefill-rows", type=int, default=0, help="the server's --prefill-rows (default 0: its auto)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON lines too")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            sys.path.insert(0, str(REPO))
            from tinylm.model.files import load_model
            path, tok = Path(args.model), load_model(args.model).tokenizer
        else:
            path, tok = write_model(args.shape, Path(tmp))
        proc, port = start_server(path, args.device, args.slots, args.tokens, args.prefill_rows)
        try:
            asyncio.run(level(port, 1, 2, min(args.tokens, 16), 30, tok.eos_id))  # warm-up
            results = [asyncio.run(level(port, c, args.requests, args.tokens, args.time_limit, tok.eos_id)) for c in levels]
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; model {args.model or args.shape}, device {args.device}, "
          f"{args.tokens} tokens/request, {args.requests} requests/client, slots {args.slots}, "
          f"prefill rows {args.prefill_rows or 'auto'}")
    print("| clients | requests | tokens/s (aggregate) | x 1 client | TTFT p50 ms | TTFT p99 ms | inter-token p50 ms |")
    print("|---|---|---|---|---|---|---|")
    base = results[0]["tokens_per_s"]
    for r in results:
        print(f"| {r['clients']} | {r['requests']} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.1f}x | "
              f"{r['ttft_p50_ms']:.1f} | {r['ttft_p99_ms']:.1f} | {r['itl_p50_ms']:.2f} |")
    if args.json:
        for r in results:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
