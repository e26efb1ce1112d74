"""JSONL text datasets: valid items parse, every kind of bad line is refused by number."""

from __future__ import annotations

import json

import pytest

from models.errors import DatasetError
from models.textdata import DEFAULT_TEMPLATE, check_template, looks_like_jsonl, parse_jsonl


def _jsonl(*objs: object) -> bytes:
    return ("\n".join(json.dumps(o) for o in objs) + "\n").encode()


def test_items_and_passages_parse_into_prompts_and_answers() -> None:
    records = parse_jsonl(_jsonl(
        {"question": "Where was Ana born?", "answer": "Telmora",
         "paraphrased_question": "Ana's birthplace?", "perturbed_answers": ["Brisk", "Galt"]},
        {"text": "Ana Lor was born in Telmora in 1950", "group": "Ana Lor"}) + b"\n\n")
    assert len(records) == 2
    assert records[0].prompt_and_answer(DEFAULT_TEMPLATE) == (
        "Question: Where was Ana born?\nAnswer:", " Telmora")
    assert records[0].prompt_and_answer(DEFAULT_TEMPLATE, paraphrased=True)[0].endswith(
        "Ana's birthplace?\nAnswer:")
    assert records[0].perturbed_answers == ("Brisk", "Galt")
    assert records[1].group == "Ana Lor" and records[0].group == ""
    prompt, answer = records[1].prompt_and_answer()
    assert prompt + answer == "Ana Lor was born in Telmora in 1950"
    assert looks_like_jsonl(b'\xef\xbb\xbf {"a": 1}') and not looks_like_jsonl(b"PK\x03\x04")


@pytest.mark.parametrize(("data", "message"), [
    (b'{"question": "q", "answer": "a"}\n{"question": "q"', "line 2: not valid JSON"),
    (b'{"question": "q", "answer": "a"}\n\xff\xfe', "line 2: not valid UTF-8"),
    (b'[1, 2]', "line 1: expected a JSON object"),
    (b'{"question": "q", "answer": 3}', "line 1: 'answer' must be a string"),
    (b'{"question": "q", "answer": "a", "colour": "red"}', "line 1: unknown field"),
    (b'{"question": "q", "answer": "a", "perturbed_answers": "x"}', "line 1: 'perturbed_answers'"),
    (b'{"question": "q"}', "line 1: needs non-empty 'question' and 'answer'"),
    (b'{"text": "t", "question": "q", "answer": "a"}', "line 1: give either"),
    (b'\n\n', "holds no items"),
])
def test_bad_lines_are_refused_by_number(data: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        parse_jsonl(data)


def test_size_limits_hold() -> None:
    with pytest.raises(DatasetError, match="line 1: 'question' is longer"):
        parse_jsonl(_jsonl({"question": "q" * 9000, "answer": "a"}))
    with pytest.raises(DatasetError, match="more than 2 lines"):
        parse_jsonl(_jsonl(*[{"question": f"q{i}", "answer": "a"} for i in range(3)]), max_lines=2)


def test_templates_must_name_the_question_only() -> None:
    assert check_template("Q: {question}\nA:") == "Q: {question}\nA:"
    for bad in ("no placeholder", "{question} {other}", "{0}"):
        with pytest.raises(DatasetError):
            check_template(bad)
