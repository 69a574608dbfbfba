"""The quality gate a model's narrative must pass to be called good.

Three checks on every text field of the reply (not the `subjects` lists, which the
analysis' own check matches against the data exactly):
- readable: the summary is a sentence (at least 3 words and 15 characters) and every
  text is mostly letters, not punctuation, digits or a loop of the same words;
- figures: every number in the text is, within the rounding it is written with, a
  number of the data (or that number as a percentage, or in thousands/millions), a
  count of something in the data, or a number of the instructions (e.g. "20-day");
- subjects: every upper-case token (tickers, ids such as F3) occurs in the data or the
  instructions, or is a common abbreviation (UTC, HTTP, AUC...).
A reply that fails any is rejected with the reasons; the score is the mean share of
texts, figures and tokens that passed (1.0 when all did).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

_FIGURE = re.compile(
    r"(?<![\w.])[-+−]?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?"
    r"(?:\s?(%|k\b|K\b|thousand\b|M\b|million\b|bn\b|billion\b))?"
)
_TOKEN = re.compile(r"\b[A-Z][A-Z0-9]{1,11}\b")
_WORD = re.compile(r"[^\W\d_]+")
_SCALE = {"k": 1e3, "K": 1e3, "thousand": 1e3, "M": 1e6, "million": 1e6, "bn": 1e9}
_SCALE["billion"] = 1e9
COMMON_ABBREVIATIONS = frozenset(
    {
        "UTC",
        "GMT",
        "ET",
        "EST",
        "EDT",
        "NY",
        "US",
        "USD",
        "EUR",
        "API",
        "HTTP",
        "HTTPS",
        "URL",
        "URLS",
        "IP",
        "IPS",
        "ID",
        "IDS",
        "CPU",
        "DB",
        "DNS",
        "TLS",
        "CDN",
        "SQL",
        "JSON",
        "CSV",
        "GET",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
        "HEAD",
        "OPTIONS",
        "PII",
        "SLA",
        "SRE",
        "KPI",
        "AUC",
        "ROC",
        "MTD",
        "YTD",
        "EOD",
        "AM",
        "PM",
        "OK",
        "NA",
        "LLM",
        "AI",
        "Q1",
        "Q2",
        "Q3",
        "Q4",
        "P50",
        "P95",
        "P99",
        "HIGH",
        "LOW",
        "MEDIUM",
        "CRITICAL",
        "NONE",
    }
)
MIN_SUMMARY_WORDS, MIN_SUMMARY_CHARS = 3, 15
MIN_LETTER_SHARE = 0.5
LOW_SCORE = 0.75  # below this a report is listed as low-quality (check and audit)


@dataclass(frozen=True)
class Verdict:
    problems: tuple[str, ...]
    score: float

    @property
    def passed(self) -> bool:
        return not self.problems


def judge(narrative: Mapping[str, Any], data: Any, instructions: str) -> Verdict:
    """Grade one reply (as a JSON mapping) against the data it was written from."""
    texts = list(_texts(narrative))
    numbers, tokens = _reference(data, instructions)
    unreadable = [(path, why) for path, text in texts if (why := _unreadable(path, text))]
    figures = [(path, f) for path, text in texts for f in _figures(text)]
    wrong = [(path, raw) for path, (raw, value, tol) in figures if not _near(value, tol, numbers)]
    names = [(path, t) for path, text in texts for t in _TOKEN.findall(text)]
    invented = [(path, t) for path, t in names if t.lower() not in tokens]
    problems = [f"{path} is not a readable sentence ({why})" for path, why in unreadable]
    if wrong:
        problems.append(
            "figures not in the data (cite the data's numbers as given): "
            + ", ".join(f"{raw} in {path}" for path, raw in wrong[:6])
        )
    if invented:
        problems.append(
            "names not in the data: " + ", ".join(f"{t} in {path}" for path, t in invented[:6])
        )
    shares = [
        1 - len(unreadable) / max(len(texts), 1),
        1 - len(wrong) / max(len(figures), 1),
        1 - len(invented) / max(len(names), 1),
    ]
    return Verdict(tuple(problems), round(sum(shares) / len(shares), 3))


def _texts(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path or "reply", value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key != "subjects":
                yield from _texts(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _texts(item, f"{path}[{index}]")


def _unreadable(path: str, text: str) -> str | None:
    words = _WORD.findall(text)
    if path == "summary" and (len(words) < MIN_SUMMARY_WORDS or len(text) < MIN_SUMMARY_CHARS):
        return f"{len(words)} words, {len(text.strip())} characters"
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return "empty"
    letters = sum(c.isalpha() for c in visible) / len(visible)
    if (letters < MIN_LETTER_SHARE and len(visible) >= 4) or not any(c.isalpha() for c in text):
        return f"{letters:.0%} letters"
    lowered = [w.lower() for w in words]
    if len(lowered) >= 12 and len(set(lowered)) / len(lowered) < 0.3:
        return "the same words repeated"
    return None


def _figures(text: str) -> Iterator[tuple[str, float, float]]:
    """(as written, value, rounding tolerance) for every number in the text."""
    for match in _FIGURE.finditer(text):
        whole, decimals, unit = match.groups()
        value = float(whole.replace(",", "") + (decimals or ""))
        tolerance = 0.5 * 10.0 ** -(len(decimals) - 1 if decimals else 0) + 1e-9
        scale = _SCALE.get(unit or "", 1.0)
        yield match.group(0).strip(), value * scale, tolerance * scale


def _near(value: float, tolerance: float, numbers: set[float]) -> bool:
    return any(abs(value - n) <= tolerance for n in numbers)


def _reference(data: Any, instructions: str) -> tuple[set[float], set[str]]:
    """The numbers a text may cite and the tokens it may name."""
    numbers: set[float] = {0.0, 1.0}
    tokens = {t.lower() for t in COMMON_ABBREVIATIONS}
    for leaf in _leaves(data):
        if isinstance(leaf, bool):
            continue
        if isinstance(leaf, int | float) and math.isfinite(leaf):
            numbers |= {abs(float(leaf)), abs(float(leaf)) * 100}
        elif isinstance(leaf, str):
            numbers |= {value for _, value, _ in _figures(leaf)}
            tokens |= {t.lower() for t in re.findall(r"\w+", leaf)}
    text = json.dumps(data, default=str) + " " + instructions
    tokens |= {t.lower() for t in re.findall(r"\w+", text)}
    numbers |= {value for _, value, _ in _figures(instructions)}
    return numbers, tokens


def _leaves(value: Any) -> Iterator[Any]:
    """Every scalar of the data, keys included, and the size of every list and mapping."""
    if isinstance(value, Mapping):
        yield len(value)
        for key, item in value.items():
            yield str(key)
            yield from _leaves(item)
    elif isinstance(value, list | tuple):
        yield len(value)
        for item in value:
            yield from _leaves(item)
    else:
        yield value
