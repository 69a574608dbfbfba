"""How a request asks a server for structured output, and how the answer comes back.

Servers disagree: OpenAI takes `json_schema` (strict or not); llama.cpp's server answers
HTTP 500 to it and wants `{"type": "json_object", "schema": ...}`; some only follow a
forced tool call; a plain chat endpoint needs the schema in the prompt. Each mode below
is one of these, in order from the most to the least constrained. The configured mode is
tried first; a server that refuses it (an HTTP 400/404/422/500 whose message names the
output format) moves the analyst to the next mode, and it stays there for the run.
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Any

from pydantic import BaseModel

MODES = ("json_schema_strict", "json_schema", "json_object", "tool_call", "prompted")
TOOL_NAME = "submit_report"
# Words that, in an error message, mean "this server does not take that output format".
_REFUSAL_WORDS = (
    "response_format",
    "json_schema",
    "json_object",
    "schema",
    "strict",
    "tool_choice",
    "tools",
    "function",
    "grammar",
    "structured",
)
_REFUSAL_STATUSES = {400, 404, 422, 500, 501}
# Keywords OpenAI's strict mode rejects; the code still checks them after parsing.
_NOT_STRICT = ("maxLength", "minLength", "title", "default")
# String lengths a grammar-constrained server (llama.cpp) unrolls into one nested rule per
# character: a 1,500-character limit gives a grammar it "failed to parse". max_tokens
# bounds the text there; the code checks the lengths.
_NOT_GRAMMAR = ("maxLength", "minLength")


def mode_for(model: str, setting: str | None) -> str:
    """The first mode to try for `model`: `setting` is one mode for every model, or a
    comma-separated list of `pattern=mode` (shell wildcards), e.g. `gemma*=json_object`."""
    if not setting:
        return MODES[0]
    chosen = None
    for part in (p.strip() for p in setting.split(",") if p.strip()):
        pattern, _, mode = part.rpartition("=")
        mode = mode.strip()
        if mode not in MODES:
            raise ValueError(f"output mode {mode!r} is not one of {', '.join(MODES)}")
        if chosen is None and (not pattern or fnmatch.fnmatchcase(model, pattern.strip())):
            chosen = mode
    return chosen or MODES[0]


def json_schema(
    schema: type[BaseModel], strict: bool = False, drop: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The model's JSON Schema without the keywords in `drop`; strict: every property
    required, no extra ones, and only the keywords OpenAI's strict mode takes."""
    document = copy.deepcopy(schema.model_json_schema())
    _tighten(document, _NOT_STRICT if strict else drop, strict)
    return document


def _tighten(node: Any, drop: tuple[str, ...], strict: bool) -> None:
    if isinstance(node, dict):
        for key in drop:
            if not isinstance(node.get(key), dict):  # a property *named* "title" stays
                node.pop(key, None)
        if strict and node.get("type") == "object" and "properties" in node:
            node["additionalProperties"] = False
            node["required"] = list(node["properties"])
        for value in node.values():
            _tighten(value, drop, strict)
    elif isinstance(node, list):
        for value in node:
            _tighten(value, drop, strict)


def request_options(mode: str, schema: type[BaseModel]) -> dict[str, Any]:
    """The chat-completion arguments that ask for `schema` in this mode."""
    name = schema.__name__
    if mode == "json_schema_strict":
        spec = {"name": name, "schema": json_schema(schema, strict=True), "strict": True}
        return {"response_format": {"type": "json_schema", "json_schema": spec}}
    if mode == "json_schema":
        spec = {"name": name, "schema": json_schema(schema)}
        return {"response_format": {"type": "json_schema", "json_schema": spec}}
    if mode == "json_object":
        grammar = json_schema(schema, drop=_NOT_GRAMMAR)
        return {"response_format": {"type": "json_object", "schema": grammar}}
    if mode == "tool_call":
        function = {
            "name": TOOL_NAME,
            "description": "Submit the report. Call it exactly once.",
            "parameters": json_schema(schema),
        }
        return {
            "tools": [{"type": "function", "function": function}],
            "tool_choice": {"type": "function", "function": {"name": TOOL_NAME}},
        }
    if mode == "prompted":
        return {}
    raise ValueError(f"unknown output mode {mode!r}")


def schema_in_prompt(mode: str, schema: type[BaseModel]) -> str | None:
    """The reply's shape as prompt text, for the modes where the server may not hold the
    schema: a compact skeleton, a tenth of the JSON Schema's tokens (a CPU server reads
    every one of them before the first token)."""
    if mode not in ("json_object", "prompted"):
        return None
    document = json_schema(schema)
    shape = _shape(document, document.get("$defs", {}))
    return f"Reply with one JSON object of this shape:\n{shape}"


def _shape(node: dict[str, Any], defs: dict[str, Any]) -> str:
    """`{"summary": string, "findings": [at most 5 {...}]}` for a JSON Schema node."""
    if "$ref" in node:
        return _shape(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    kind = node.get("type")
    if kind == "object":
        fields = ", ".join(
            f'"{name}": {_shape(value, defs)}' for name, value in node["properties"].items()
        )
        return "{" + fields + "}"
    if kind == "array":
        limit = f"at most {node['maxItems']} " if "maxItems" in node else ""
        return f"[{limit}{_shape(node.get('items', {}), defs)}]"
    return kind or "value"


def refuses_mode(status: int, message: str) -> bool:
    """True when an HTTP error says the server does not take the output format it was
    sent (the message is only searched, never logged: it may echo request content)."""
    text = message.lower()
    return status in _REFUSAL_STATUSES and any(word in text for word in _REFUSAL_WORDS)


def reply_json_text(mode: str, content: str, tool_arguments: str) -> str:
    """The JSON text of a reply: the tool call's arguments, or the message content with
    any Markdown fence or prose around the object removed."""
    if mode == "tool_call" and tool_arguments.strip():
        return tool_arguments
    text = content.strip()
    if text.startswith("{") or "{" not in text:
        return text
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if end > start else text
