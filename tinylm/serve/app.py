"""The HTTP side of `tinylm serve`: OpenAI-compatible routes on Starlette (the ASGI toolkit under
FastAPI), server-sent events, the API key, the body limit, and the playground page.

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
GET /card (the page's model card and training curve), GET / (the page, from static/).

Streaming follows OpenAI's wire format: `data: {json chunk}\\n\\n` per piece of text, then
`data: [DONE]\\n\\n`. Generation runs in the batcher's thread; each request gets its events
through an asyncio queue (call_soon_threadsafe). A client that goes away mid-request (stream or
not) cancels its job, which frees its slots at the next token boundary.

Errors are OpenAI's shape ({"error": {"message", "type", "param", "code"}}) with 400 (bad
field), 401 (API key), 404, 413 (body too large), 503 (queue full), 500 (the model failed).
Imports starlette at module level: only `tinylm serve` (command.py) imports this module.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..generate.chat import format_qa
from ..tokenizers.base import BOS
from ..util.errors import UsageError
from .batcher import Batcher, Job, QueueFull
from .schemas import ApiError, Request, chat_request, completion_request, error_body

STATIC = Path(__file__).parent / "static"
PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/style.css": ("style.css", "text/css; charset=utf-8")}
# the page may talk only to this server: no CDN, no other origin, no inline script
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


@dataclass
class ServerState:
    batcher: Batcher
    tokenizer: object
    model_name: str
    max_tokens: int  # per-request limit on generated tokens
    max_body: int = 1 << 20  # bytes
    api_key: str | None = None
    card: dict = field(default_factory=dict)  # GET /card: {"card": ..., "metrics": ...}
    created: int = field(default_factory=lambda: int(time.time()))


# ---------------------------------------------------------------- request helpers

def check_key(state: ServerState, request: HttpRequest) -> None:
    if state.api_key is None:
        return
    got = request.headers.get("authorization", "")
    scheme, _, token = got.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
        raise ApiError(401, "missing or wrong API key; send the header 'Authorization: Bearer KEY'",
                       code="invalid_api_key")


async def read_json(state: ServerState, request: HttpRequest):
    """The body as JSON, refused past `max_body` bytes before more is read."""
    too_big = ApiError(413, f"the request body is larger than the server's limit of {state.max_body:,} bytes",
                       code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > state.max_body:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > state.max_body:
            raise too_big
        chunks.append(chunk)
    from ..model.files import loads_bounded  # noqa: PLC0415 - the JSON reader with a nesting bound

    try:
        return loads_bounded(b"".join(chunks))
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text") from None
    except ValueError as e:  # json.JSONDecodeError is one
        raise ApiError(400, f"the request body is not valid JSON ({str(e)[:120]})") from None


def encode_plain(tokenizer, text: str) -> list[int]:
    """User text -> ids, never special tokens ("<EOS>" typed by a user stays five characters)."""
    kwargs = {"unknown": "replace"} if tokenizer.kind == "char" else {}
    try:
        return tokenizer.encode(text, allow_special=False, **kwargs)
    except UsageError as e:
        raise ApiError(400, str(e), param="prompt") from None


def chat_ids(tokenizer, messages: list[tuple[str, str]]) -> list[int]:
    """The conversation in the Q&A format the model was trained on (generate/chat.py): each
    earlier user/assistant pair a whole `<BOS>Question: q\\nAnswer: a<EOS>`, the last question
    its prompt form. Only <BOS>/<EOS> come from the template; the texts are encoded plain.
    System messages have no place in the format and are left out."""
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    turns: list[list[str]] = []  # [question, answer or None]
    for role, text in messages:
        if role == "user":
            if turns and turns[-1][1] is None:  # two questions in a row: one question
                turns[-1][0] += "\n" + text
            else:
                turns.append([text, None])
        elif role == "assistant" and turns and turns[-1][1] is None:
            turns[-1][1] = text
    ids: list[int] = []
    for q, a in turns:
        plain = format_qa(q)[len(BOS):] + (a or "")
        ids += ([bos] if bos is not None else []) + encode_plain(tokenizer, plain)
        if a is not None and eos is not None:
            ids.append(eos)
    return ids


def _emitter(queue: asyncio.Queue):
    loop = asyncio.get_running_loop()

    def emit(event: tuple) -> None:  # called from the batcher's thread
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:  # the event loop has closed: the server is shutting down
            pass

    return emit


def start_job(state: ServerState, req: Request, ids: list[int]) -> tuple[Job, asyncio.Queue]:
    queue: asyncio.Queue = asyncio.Queue()
    job = Job(ids=ids, max_tokens=req.max_tokens, emit=_emitter(queue), sampling=req.sampling, n=req.n, stops=req.stop)
    try:
        state.batcher.submit(job)
    except QueueFull:
        raise ApiError(503, "the server is busy: every slot is taken and the queue is full; retry shortly",
                       kind="server_error", code="server_overloaded") from None
    return job, queue


async def until_disconnect(request: HttpRequest) -> None:
    """Return when the client goes away (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ---------------------------------------------------------------- responses

class Shapes:
    """The OpenAI object shapes of one endpoint."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _wrap(self, choices: list, obj: str, usage=None) -> dict:
        out = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out

    def whole(self, texts: list[str], reasons: list[str], usage: dict) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(texts, reasons))]
        else:
            choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]
        return self._wrap(choices, self.object, usage)

    def chunk(self, index: int, piece: str | None, reason: str | None = None, first: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else {} if piece is None else {"content": piece}
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}
            return self._wrap([choice], "chat.completion.chunk")
        return self._wrap([{"index": index, "text": piece or "", "logprobs": None, "finish_reason": reason}], "text_completion")

    def usage_chunk(self, usage: dict) -> dict:
        return self._wrap([], "chat.completion.chunk" if self.chat else "text_completion", usage)


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class EventStream(StreamingResponse):
    """A StreamingResponse that always listens for the client leaving while it streams (whatever
    the server's ASGI version), so a closed connection cancels the job at once rather than at
    the next failed write."""

    def __init__(self, content, on_gone):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_gone = on_gone

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as tg:
            async def stream() -> None:
                try:
                    await self.stream_response(send)
                except OSError:  # the client went away mid-write
                    self.on_gone()
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.on_gone()
                    tg.cancel_scope.cancel()
                    break


async def respond(state: ServerState, req: Request, ids: list[int], chat: bool, request: HttpRequest) -> Response:
    job, queue = start_job(state, req, ids)
    shapes = Shapes(chat, state.model_name)
    echo = req.prompt if req.echo else ""
    gone = lambda: state.batcher.cancel(job)  # noqa: E731

    if not req.stream:
        texts, reasons, usage, failed = [echo] * req.n, ["length"] * req.n, None, None
        async with anyio.create_task_group() as tg:
            async def watch() -> None:
                await until_disconnect(request)
                gone()
                tg.cancel_scope.cancel()  # nobody is waiting for the answer any more

            tg.start_soon(watch)
            while True:
                ev = await queue.get()
                if ev[0] == "text":
                    texts[ev[1]] += ev[2]
                elif ev[0] == "end":
                    reasons[ev[1]] = ev[2]
                elif ev[0] == "error":
                    failed = ev[1]
                    tg.cancel_scope.cancel()
                    break
                else:
                    usage = ev[1]
                    tg.cancel_scope.cancel()
                    break
        if failed is not None:  # raised out here: inside the task group it would come wrapped in a group
            raise ApiError(500, f"generation failed: {failed}", kind="server_error")
        if usage is None:  # the client left
            return Response(status_code=499)
        return JSONResponse(shapes.whole(texts, reasons, usage))

    async def events():
        finished = False
        try:
            for i in range(req.n):
                if chat:
                    yield sse(shapes.chunk(i, None, first=True))
                elif echo:
                    yield sse(shapes.chunk(i, echo))
            while True:
                ev = await queue.get()
                if ev[0] == "text":
                    yield sse(shapes.chunk(ev[1], ev[2]))
                elif ev[0] == "end":
                    yield sse(shapes.chunk(ev[1], None, reason=ev[2]))
                elif ev[0] == "error":
                    finished = True
                    yield sse(error_body(f"generation failed: {ev[1]}", "server_error"))
                    return
                else:
                    finished = True
                    if req.include_usage:
                        yield sse(shapes.usage_chunk(ev[1]))
                    yield "data: [DONE]\n\n"
                    return
        finally:
            if not finished:
                gone()

    return EventStream(events(), gone)


# ---------------------------------------------------------------- the app

def build_app(state: ServerState) -> Starlette:
    async def completions(request: HttpRequest) -> Response:
        check_key(state, request)
        b = state.batcher
        req = completion_request(await read_json(state, request), state.max_tokens, state.tokenizer.vocab_size, b.S)
        return await respond(state, req, encode_plain(state.tokenizer, req.prompt), False, request)

    async def chat_completions(request: HttpRequest) -> Response:
        check_key(state, request)
        b = state.batcher
        req = chat_request(await read_json(state, request), state.max_tokens, state.tokenizer.vocab_size, b.S)
        ids = chat_ids(state.tokenizer, req.messages)
        if not ids:
            raise ApiError(400, "the messages hold no text", param="messages")
        return await respond(state, req, ids, True, request)

    async def models(request: HttpRequest) -> Response:
        check_key(state, request)
        return JSONResponse({"object": "list", "data": [
            {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "tinylm"}]})

    async def health(request: HttpRequest) -> Response:
        return JSONResponse({"status": "ok", **state.batcher.stats()})

    async def card(request: HttpRequest) -> Response:
        check_key(state, request)
        return JSONResponse(state.card)

    async def page(request: HttpRequest) -> Response:
        name, media = PAGES[request.url.path]
        return Response((STATIC / name).read_bytes(), media_type=media, headers=PAGE_HEADERS)

    async def api_error(request: HttpRequest, exc: ApiError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def http_error(request: HttpRequest, exc: HTTPException) -> Response:
        return JSONResponse(error_body(f"{exc.detail}: {request.method} {request.url.path}"), status_code=exc.status_code)

    async def crash(request: HttpRequest, exc: Exception) -> Response:
        return JSONResponse(error_body(f"internal error ({type(exc).__name__})", "server_error"), status_code=500)

    routes = [Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]), Route("/health", health, methods=["GET"]),
              Route("/card", card, methods=["GET"])]
    routes += [Route(path, page, methods=["GET"]) for path in PAGES]
    return Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: crash})
