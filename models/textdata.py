"""Text datasets as JSONL: one object per line, question/answer items or ``text`` passages.

    records = parse_jsonl(path.read_bytes())      # DatasetError names the bad line
    prompt, answer = records[0].prompt_and_answer(DEFAULT_TEMPLATE)

Fields: ``question`` and ``answer`` (strings), optional ``paraphrased_question``,
``paraphrased_answer`` (strings) and ``perturbed_answers`` (a list of strings); or ``text``
alone for a passage (its first half of words is the prompt, the rest the answer). An optional
``group`` names the unit items were drawn by (e.g. the person several facts are about): the
audits then test and split by group, since items of one group are not independent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from models.errors import DatasetError

DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"
MAX_LINES = 100_000
MAX_LINE_BYTES = 64 * 1024
MAX_FIELD_CHARS = 8_192
MAX_PERTURBED = 16
_STRING_FIELDS = ("question", "answer", "paraphrased_question", "paraphrased_answer", "text",
                  "group")
_FIELDS = (*_STRING_FIELDS, "perturbed_answers")


@dataclass(frozen=True)
class TextRecord:
    """One item of a text dataset (the JSONL line's fields; absent ones are empty)."""

    question: str = ""
    answer: str = ""
    paraphrased_question: str = ""
    paraphrased_answer: str = ""
    perturbed_answers: tuple[str, ...] = ()
    text: str = ""
    group: str = ""

    def prompt_and_answer(self, template: str = DEFAULT_TEMPLATE, *,
                          paraphrased: bool = False) -> tuple[str, str]:
        """The prompt and the answer it should be followed by (with its leading space)."""
        if self.text:
            words = self.text.split(" ")
            half = max(1, len(words) // 2)
            return " ".join(words[:half]), " " + " ".join(words[half:])
        question = self.paraphrased_question if paraphrased and self.paraphrased_question \
            else self.question
        return template.format(question=question), " " + self.answer

    def full_text(self, template: str = DEFAULT_TEMPLATE) -> str:
        """The item as one text: the prompt followed by its answer."""
        prompt, answer = self.prompt_and_answer(template)
        return prompt + answer

    def key(self) -> str:
        """What identifies the item when sets are checked for overlap."""
        return " ".join((self.text or self.question).lower().split())


def check_template(template: str) -> str:
    """Refuse a prompt template without exactly the ``{question}`` placeholder."""
    try:
        rendered = template.format(question="Q")
    except (KeyError, IndexError, ValueError) as exc:
        raise DatasetError(f"prompt template must use only {{question}}: {exc}") from None
    if "{question}" not in template or "Q" not in rendered:
        raise DatasetError("prompt template must contain {question}")
    return template


def _record(obj: Any, line: int) -> TextRecord:
    if not isinstance(obj, dict):
        raise DatasetError(f"line {line}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        raise DatasetError(f"line {line}: unknown field(s) {unknown}; accepted: {list(_FIELDS)}")
    for name in _STRING_FIELDS:
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise DatasetError(f"line {line}: {name!r} must be a string")
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
            raise DatasetError(f"line {line}: {name!r} is longer than {MAX_FIELD_CHARS} "
                               "characters")
    perturbed = obj.get("perturbed_answers", [])
    if not isinstance(perturbed, list) or not all(isinstance(p, str) and p.strip()
                                                  for p in perturbed):
        raise DatasetError(f"line {line}: 'perturbed_answers' must be a list of non-empty "
                           "strings")
    if len(perturbed) > MAX_PERTURBED or any(len(p) > MAX_FIELD_CHARS for p in perturbed):
        raise DatasetError(f"line {line}: at most {MAX_PERTURBED} perturbed answers of at most "
                           f"{MAX_FIELD_CHARS} characters")
    text = (obj.get("text") or "").strip()
    question = (obj.get("question") or "").strip()
    answer = (obj.get("answer") or "").strip()
    if text:
        if question or answer:
            raise DatasetError(f"line {line}: give either 'text' or 'question' and 'answer'")
        if len(text.split()) < 2:
            raise DatasetError(f"line {line}: 'text' needs at least two words")
    elif not question or not answer:
        raise DatasetError(f"line {line}: needs non-empty 'question' and 'answer' (or 'text')")
    return TextRecord(question=question, answer=answer,
                      paraphrased_question=(obj.get("paraphrased_question") or "").strip(),
                      paraphrased_answer=(obj.get("paraphrased_answer") or "").strip(),
                      perturbed_answers=tuple(p.strip() for p in perturbed), text=text,
                      group=(obj.get("group") or "").strip())


def parse_jsonl(data: bytes, *, max_lines: int = MAX_LINES) -> list[TextRecord]:
    """Validate and parse JSONL bytes; :class:`DatasetError` names the first bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(f"line {line}: not valid UTF-8") from None
    records: list[TextRecord] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        if len(raw.encode()) > MAX_LINE_BYTES:
            raise DatasetError(f"line {number}: longer than {MAX_LINE_BYTES} bytes")
        if len(records) >= max_lines:
            raise DatasetError(f"more than {max_lines} lines")
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"line {number}: not valid JSON ({exc.msg})") from None
        records.append(_record(obj, number))
    if not records:
        raise DatasetError("the JSONL file holds no items")
    return records


def looks_like_jsonl(head: bytes) -> bool:
    """Whether the first bytes of an upload look like JSONL (a JSON object first)."""
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{"


def summarize(records: list[TextRecord]) -> dict[str, Any]:
    """Counts of the optional fields, for a dataset's listing."""
    return {"n": len(records),
            "passages": sum(1 for r in records if r.text),
            "paraphrased": sum(1 for r in records if r.paraphrased_question),
            "perturbed": sum(1 for r in records if r.perturbed_answers)}


__all__ = ["DEFAULT_TEMPLATE", "TextRecord", "check_template", "looks_like_jsonl",
           "parse_jsonl", "summarize"]
