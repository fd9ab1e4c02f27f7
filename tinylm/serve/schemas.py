"""The OpenAI request bodies, checked field by field, and the OpenAI-style error body.

Every field is checked for its type and range by hand rather than by a schema library, so that
each error names the field and says what it accepts, in the shape OpenAI clients parse:
    {"error": {"message": ..., "type": "invalid_request_error", "param": "temperature", "code": null}}
Unknown fields are refused (a misspelt `max_token` must not silently mean "the default").
Fields OpenAI defines that tinylm cannot honour are accepted only at their "off" value.
Extensions: `top_k` (0 = off), and `logit_bias` keys are tinylm token ids.

No HTTP and no model here: a body (already parsed JSON) in, a Request out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .batcher import RowSampling

MAX_STOPS = 4  # as OpenAI
MAX_N = 8


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class Request:
    """A checked completion or chat request."""
    prompt: str = ""  # completions
    messages: list[tuple[str, str]] = field(default_factory=list)  # chat: (role, content)
    max_tokens: int = 16
    sampling: RowSampling = field(default_factory=RowSampling)
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    echo: bool = False


# field -> its "off" value: accepted (OpenAI clients may send them), anything else is refused
_OFF = {"presence_penalty": 0, "frequency_penalty": 0, "logprobs": None, "top_logprobs": None, "best_of": 1,
        "suffix": None, "parallel_tool_calls": None, "tools": None, "tool_choice": None, "response_format": None}
_COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream", "stream_options",
           "logit_bias", "user", "presence_penalty", "frequency_penalty", "logprobs"}
COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "best_of", "suffix"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "parallel_tool_calls", "tools",
                         "tool_choice", "response_format"}


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param)


def _int(body: dict, name: str, default, lo: int, hi: int | None = None):
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, f"'{name}' must be an integer, got {type(v).__name__} {v!r:.40}")
    if v < lo or (hi is not None and v > hi):
        raise _bad(name, f"'{name}' must be {f'between {lo} and {hi}' if hi is not None else f'at least {lo}'}, got {v}")
    return v


def _num(body: dict, name: str, default: float, ok, what: str) -> float:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(name, f"'{name}' must be a number, got {type(v).__name__} {v!r:.40}")
    if not math.isfinite(v) or not ok(v):
        raise _bad(name, f"'{name}' must be {what}, got {v}")
    return float(v)


def _bool(body: dict, name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _bad(name, f"'{name}' must be true or false, got {type(v).__name__} {v!r:.40}")
    return v


def _stops(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("stop", "'stop' must be a string or a list of strings")
    if len(stops) > MAX_STOPS:
        raise _bad("stop", f"'stop' may hold at most {MAX_STOPS} strings, got {len(stops)}")
    if any(s == "" for s in stops):
        raise _bad("stop", "'stop' strings must not be empty")
    return stops


def _logit_bias(body: dict, vocab_size: int) -> dict[int, float]:
    v = body.get("logit_bias")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _bad("logit_bias", "'logit_bias' must be an object mapping token ids to biases")
    out = {}
    for key, b in v.items():
        if not key.isdigit() or int(key) >= vocab_size:
            raise _bad("logit_bias", f"'logit_bias' keys must be token ids below {vocab_size}, got {key!r:.40}")
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not -100 <= b <= 100:
            raise _bad("logit_bias", f"'logit_bias' values must be numbers from -100 to 100, got {b!r:.40}")
        out[int(key)] = float(b)
    return out


def _common(body: dict, allowed: set[str], max_tokens_field: str, default_tokens: int, limit: int,
            vocab_size: int, slots: int) -> Request:
    if not isinstance(body, dict):
        raise _bad(None, f"the request body must be a JSON object, got a JSON {type(body).__name__}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _bad(unknown[0], f"unknown field '{unknown[0]:.40}'; this endpoint accepts {', '.join(sorted(allowed))}")
    for name, off in _OFF.items():
        if name in body and body[name] is not None and body[name] != off and name in allowed:
            raise _bad(name, f"'{name}' is not supported by tinylm (leave it out, or send {off!r})")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", "'model' must be a string")
    if body.get(max_tokens_field) is not None:
        max_tokens = _int(body, max_tokens_field, default_tokens, 1, limit)
    else:
        max_tokens = _int(body, "max_tokens", default_tokens, 1, limit)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad("seed", f"'seed' must be an integer, got {type(seed).__name__} {seed!r:.40}")
    if seed is not None and not -2**63 <= seed < 2**63:
        raise _bad("seed", "'seed' must fit in 64 bits")
    sampling = RowSampling(
        temperature=_num(body, "temperature", 1.0, lambda t: t >= 0, "a number >= 0 (0 = greedy)"),
        top_k=_int(body, "top_k", 0, 0),
        top_p=_num(body, "top_p", 1.0, lambda p: 0 < p <= 1, "in (0, 1] (1 = off)"),
        seed=seed, logit_bias=_logit_bias(body, vocab_size))
    opts = body.get("stream_options")
    if opts is not None and (not isinstance(opts, dict) or set(opts) - {"include_usage"}
                             or not isinstance(opts.get("include_usage", False), bool)):
        raise _bad("stream_options", "'stream_options' must be {\"include_usage\": true|false}")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user", "'user' must be a string")
    return Request(max_tokens=max_tokens, sampling=sampling, n=_int(body, "n", 1, 1, min(MAX_N, slots)),
                   stop=_stops(body), stream=_bool(body, "stream"), include_usage=bool((opts or {}).get("include_usage")))


def completion_request(body, limit: int, vocab_size: int, slots: int) -> Request:
    req = _common(body, COMPLETION_FIELDS, "max_tokens", 16, limit, vocab_size, slots)  # 16: OpenAI's default
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("prompt", "'prompt' must be a string (one prompt of plain text; token-id prompts are not accepted)")
    if not prompt:
        raise _bad("prompt", "'prompt' is empty; send some text")
    req.prompt, req.echo = prompt, _bool(body, "echo")
    return req


def _content(i: int, content) -> str:
    """A message's content: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                                         for p in content):
        return "".join(p["text"] for p in content)
    raise _bad(f"messages[{i}].content", f"messages[{i}].content must be a string or a list of text parts")


def chat_request(body, limit: int, vocab_size: int, slots: int) -> Request:
    req = _common(body, CHAT_FIELDS, "max_completion_tokens", limit, limit, vocab_size, slots)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content", "name"}:
            raise _bad(f"messages[{i}]", f"messages[{i}] must be an object with 'role' and 'content' (and optional 'name')")
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise _bad(f"messages[{i}].role", f"messages[{i}].role must be system, user or assistant, got {role!r:.40}")
        out.append((role, _content(i, m.get("content"))))
    if out[-1][0] != "user":
        raise _bad("messages", "the last message must be the user's question")
    req.messages = out
    return req
