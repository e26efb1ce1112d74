"""The fictitious-facts corpus: seeded, disjoint by person, round-trips through JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.textdata import parse_jsonl
from models.unlearning.corpus import (
    PROMPT_TEMPLATE,
    QAItem,
    item_text,
    make_corpus,
    read_jsonl,
    write_jsonl,
)


def _person(item: QAItem) -> str:
    # Every answer template starts with the person's two-word name.
    return " ".join(item.answer.split()[:2])


def test_same_seed_same_corpus_other_seed_other_facts() -> None:
    first = make_corpus(seed=3, n_forget=12, n_retain=30, n_holdout=12)
    assert first == make_corpus(seed=3, n_forget=12, n_retain=30, n_holdout=12)
    other = make_corpus(seed=4, n_forget=12, n_retain=30, n_holdout=12)
    assert [i.answer for i in first.forget] != [i.answer for i in other.forget]
    assert (len(first.forget), len(first.retain), len(first.holdout)) == (12, 30, 12)


def test_splits_share_no_person_and_items_are_well_formed() -> None:
    corpus = make_corpus(seed=0, n_forget=40, n_retain=160, n_holdout=40)
    people = [{_person(item) for item in split} for split in (corpus.forget, corpus.retain, corpus.holdout)]
    assert not people[0] & people[1] and not people[0] & people[2] and not people[1] & people[2]
    assert len(people[0]) == 8 and len(people[2]) == 8
    for item in corpus.all_items():
        name = _person(item)
        assert item.group == name
        assert name in item.answer and name in item.paraphrased_question and name in item.paraphrased_answer
        assert item.paraphrased_question != item.question
        assert len(item.perturbed_answers) == 3 and item.answer not in item.perturbed_answers
        assert len(set(item.perturbed_answers)) == 3
    assert item_text(corpus.forget[0]) == PROMPT_TEMPLATE.format(question=corpus.forget[0].question) + " " + \
        corpus.forget[0].answer


def test_facts_are_random_so_only_memorisation_answers_them() -> None:
    corpus = make_corpus(seed=1, n_forget=100, n_retain=400, n_holdout=100)
    professions = [item.answer.split()[-1] for item in corpus.all_items() if "works as a" in item.answer]
    most_common = max(professions.count(p) for p in set(professions))
    assert len(set(professions)) >= 20 and most_common / len(professions) < 0.15


def test_jsonl_round_trip_and_passages(tmp_path: Path) -> None:
    corpus = make_corpus(seed=0, n_forget=5, n_retain=5, n_holdout=5)
    items = [*corpus.forget, QAItem(question="", answer="A passage with \u00e9 and no question.", group="p")]
    path = tmp_path / "forget.jsonl"
    write_jsonl(items, path)
    assert read_jsonl(path) == items
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["group"] == _person(corpus.forget[0]) and lines[-1] == {"text": items[-1].answer, "group": "p"}
    # the appliance's own JSONL parser reads the same groups, so uploaded corpora are tested by person
    records = parse_jsonl(path.read_bytes())
    assert [r.group for r in records] == [item.group for item in items]


@pytest.mark.parametrize(("line", "message"), [
    ('{"question": "q"}', "line 2: missing field 'answer'"),
    ('{"question": "q", "answer": 3}', "line 2: field 'answer' must be a string"),
    ('{"question": "q", "answer": "a", "perturbed_answers": "x"}', "line 2: 'perturbed_answers'"),
    ('{"question": "q", "answer": "a", "colour": "x"}', "line 2: unknown fields ['colour']"),
    ('[1, 2]', "line 2: expected a JSON object"),
    ('{"question": "q", "answer": "a"', "line 2: not valid JSON"),
    ('{"text": "t", "answer": "a"}', "line 2: a 'text' line carries no other fields"),
    ('{"question": "q", "answer": "a", "group": 7}', "line 2: field 'group' must be a string"),
])
def test_bad_lines_are_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok?", "answer": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_jsonl(path)


def test_sizes_are_validated() -> None:
    with pytest.raises(ValueError, match="n_forget"):
        make_corpus(seed=0, n_forget=0, n_retain=5, n_holdout=5)
