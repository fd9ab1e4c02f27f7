"""The `tinylm serve` subcommand: its flags, the checks made before anything is loaded, and the
uvicorn server. Importing this module is light (cli_parser.py does, for the flags); starlette and
uvicorn are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from ..util.errors import UsageError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
EXTRA = "tinylm serve needs the web server packages: pip install 'tinylm[serve]'"
MAX_SLOTS = 256
MAX_REQUEST_TOKENS = 100_000


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API, with a playground page",
                       description="Serve a model: POST /v1/completions and /v1/chat/completions (OpenAI's shapes, "
                                   "streaming included), GET /v1/models, /health, and a playground page at /.")
    p.add_argument("-m", "--model", required=True, help="model file to serve")
    p.add_argument("--adapter", help="a fine-tuning adapter file to apply to the model (needs tinylm.lora)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only; "
                   "any other address is reachable from the network and prints a warning)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port, printed at start)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on the API "
                   "(default: $TINYLM_API_KEY if set, else no key)")
    p.add_argument("--slots", type=int, default=0, help="rows of the running batch: requests served at once "
                   "(0 = auto: 32 on CUDA, 8 on the CPU)")
    p.add_argument("--prefill-rows", type=int, default=0, help="prompts of equal length prefilled in one forward, which "
                   "always has this many rows (0 = auto: 8 on CUDA, where a wider forward costs little, 1 on the CPU)")
    p.add_argument("--queue", type=int, default=64, help="requests that may wait for a slot; more get 503 (default 64)")
    p.add_argument("--max-tokens", type=int, default=1024, help="most tokens one request may generate (default 1024)")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (default 1 MiB)")
    p.add_argument("--name", default=None, help="the model's name in the API (default: the file name without .model)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to run (default auto)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch (0 = auto: 1 for small models)")


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before the model is loaded."""
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535, got {args.port}")
    if not 0 <= args.slots <= MAX_SLOTS:
        raise UsageError(f"--slots must be from 0 (auto) to {MAX_SLOTS}, got {args.slots}")
    if not 0 <= args.prefill_rows <= MAX_SLOTS:
        raise UsageError(f"--prefill-rows must be from 0 (auto) to {MAX_SLOTS}, got {args.prefill_rows}")
    if args.queue < 0:
        raise UsageError(f"--queue must be >= 0, got {args.queue}")
    if not 1 <= args.max_tokens <= MAX_REQUEST_TOKENS:
        raise UsageError(f"--max-tokens must be from 1 to {MAX_REQUEST_TOKENS:,}, got {args.max_tokens}")
    if args.max_body < 1024:
        raise UsageError(f"--max-body must be at least 1024 bytes, got {args.max_body}")
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0 (0 = auto), got {args.threads}")
    if args.api_key is not None and not args.api_key.strip():
        raise UsageError("--api-key is empty; give a key, or leave the flag out to serve without one")
    try:
        import starlette  # noqa: F401, PLC0415
        import uvicorn  # noqa: F401, PLC0415
    except ImportError:
        raise UsageError(EXTRA) from None


def open_socket(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn, so a taken port or a bad host is one clear error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host} is not an address this machine can listen on ({e.strerror}); "
                         "use 127.0.0.1, or an address of this machine") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host} port {port} ({e.strerror}); pick another --port, "
                         "or stop the program that holds it") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def load_served_model(args: argparse.Namespace):
    import torch  # noqa: PLC0415

    from ..model.files import load_model  # noqa: PLC0415
    from ..util.device import resolve_device  # noqa: PLC0415

    device = resolve_device(args.device)
    loaded = load_model(args.model, device)
    if args.adapter:
        try:
            from ..lora import load_adapter  # noqa: PLC0415
        except ImportError:
            raise UsageError("adapters need tinylm.lora, which this tinylm lacks; serve the model without --adapter") from None
        loaded.model = load_adapter(loaded.model, args.adapter)
    # small models decode fastest on one thread (see cli._generation_setup)
    if args.threads or (device.type == "cpu" and loaded.model.num_params() < 50_000_000):
        torch.set_num_threads(args.threads or 1)
    return loaded, device


def build_state(args: argparse.Namespace, loaded, device):
    from .app import ServerState  # noqa: PLC0415
    from .batcher import Batcher  # noqa: PLC0415
    from .page_data import page_card  # noqa: PLC0415

    slots = args.slots or (32 if device.type == "cuda" else 8)
    prefill = args.prefill_rows or (8 if device.type == "cuda" else 1)
    batcher = Batcher(loaded.model, loaded.tokenizer, slots=slots, max_queue=args.queue, prefill_rows=prefill)
    name = args.name or Path(args.model).name.removesuffix(".model")
    key = args.api_key if args.api_key is not None else (os.environ.get("TINYLM_API_KEY") or None)
    return ServerState(batcher=batcher, tokenizer=loaded.tokenizer, model_name=name, max_tokens=args.max_tokens,
                       max_body=args.max_body, api_key=key, card=page_card(args.model, loaded))


def cmd_serve(args: argparse.Namespace) -> int:
    check_args(args)
    if args.host not in LOOPBACK:
        sys.stderr.write(f"warning: --host {args.host} makes the server reachable from other machines"
                         + ("" if args.api_key or os.environ.get("TINYLM_API_KEY") else "; anyone who can reach it can use it "
                            "(set --api-key)") + "\n")
    sock = open_socket(args.host, args.port)
    loaded, device = load_served_model(args)
    state = build_state(args, loaded, device)
    import uvicorn  # noqa: PLC0415

    from .app import build_app  # noqa: PLC0415

    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    sys.stderr.write(f"serving {state.model_name} on http://{shown}:{port} ({state.batcher.S} slots, "
                     f"queue {args.queue}{', API key required' if state.api_key else ''}); Ctrl-C stops\n")
    sys.stderr.flush()
    state.batcher.start()
    try:
        server = uvicorn.Server(uvicorn.Config(build_app(state), log_level="warning", access_log=False,
                                               timeout_graceful_shutdown=2))
        server.run(sockets=[sock])
    finally:
        state.batcher.stop()
        sock.close()
    return 0
