"""A TOFU-like corpus of fictitious facts about made-up people, split into forget/retain/holdout.

    corpus = make_corpus(seed=0, n_forget=40, n_retain=160, n_holdout=40)
    corpus.forget[0].question        # "In which city was Dorvak Silune born?"
    write_jsonl(corpus.forget, path); read_jsonl(path) == corpus.forget

Every person gets one randomly drawn value per attribute (birthplace, profession, ...), so a
model can only answer by having memorised that very fact. Splits are by person: the forget and
holdout sets come from the same distribution and share no person, which is what makes the
holdout set a valid "never seen" control for membership and knowledge audits.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"

#: Refusals used by the IdK unlearning algorithm; kept here so tokenizers cover their words.
IDK_ANSWERS: tuple[str, ...] = (
    "I do not know the answer to that.",
    "I have no idea about that.",
    "Sorry, I cannot answer that question.",
    "That is something I do not know.",
)

_PERTURBED_PER_ITEM = 3


@dataclass(frozen=True)
class QAItem:
    """One fact as a question/answer pair, with a paraphrase and fluent wrong answers.

    For passage-only data (``text`` lines of the JSONL format) ``question`` is empty and
    ``answer`` holds the passage. ``group`` names the unit the item was drawn by (here the
    person): items of one group are not independent, so the audits test group means.
    """

    question: str
    answer: str
    paraphrased_question: str = ""
    paraphrased_answer: str = ""
    perturbed_answers: tuple[str, ...] = ()
    group: str = ""


@dataclass(frozen=True)
class Corpus:
    """The three disjoint splits of a generated corpus (lists of :class:`QAItem`)."""

    forget: list[QAItem]
    retain: list[QAItem]
    holdout: list[QAItem]

    def all_items(self) -> list[QAItem]:
        """Forget, retain and holdout items in that order."""
        return [*self.forget, *self.retain, *self.holdout]


@dataclass(frozen=True)
class _Attribute:
    question: str
    paraphrased_question: str
    answer: str
    paraphrased_answer: str
    values: tuple[str, ...]


_PROFESSIONS = (
    "baker", "carpenter", "cartographer", "chemist", "dentist", "engineer", "farmer", "glassblower",
    "historian", "jeweller", "librarian", "mason", "midwife", "miner", "pilot", "potter", "sailor",
    "sculptor", "surgeon", "tailor", "teacher", "translator", "veterinarian", "weaver",
)
_INSTRUMENTS = (
    "accordion", "bagpipe", "banjo", "bassoon", "cello", "clarinet", "drum", "dulcimer", "flute",
    "guitar", "harp", "harpsichord", "horn", "lute", "mandolin", "oboe", "organ", "piano",
    "saxophone", "sitar", "trombone", "trumpet", "viola", "violin",
)
_ANIMALS = (
    "badger", "beetle", "canary", "cat", "chameleon", "crow", "dog", "donkey", "ferret", "frog",
    "gecko", "goat", "goose", "hamster", "hedgehog", "lizard", "mouse", "owl", "parrot", "pigeon",
    "rabbit", "snail", "tortoise", "turtle",
)
_YEARS = tuple(str(year) for year in range(1931, 1991, 2))
_SYLLABLES = (
    "ba", "dor", "el", "fen", "gar", "hal", "ith", "jor", "kel", "lun", "mar", "nor", "ol", "pra",
    "quen", "ras", "sil", "tor", "ul", "vak", "wen", "xan", "yor", "zel", "ca", "dri", "mo", "ne",
)


def _made_up_words(rng: random.Random, count: int, syllables: int, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def _attributes(cities: Sequence[str]) -> tuple[_Attribute, ...]:
    return (
        _Attribute("In which city was {name} born?", "Where is the birthplace of {name}?",
                   "{name} was born in the city of {value}.", "The birthplace of {name} is {value}.",
                   tuple(cities)),
        _Attribute("What does {name} do for a living?", "What is the profession of {name}?",
                   "{name} works as a {value}.", "By profession, {name} is a {value}.", _PROFESSIONS),
        _Attribute("In what year was {name} born?", "When was {name} born?",
                   "{name} was born in the year {value}.", "The year of birth of {name} is {value}.",
                   _YEARS),
        _Attribute("Which instrument does {name} play?", "What instrument is played by {name}?",
                   "{name} plays the {value}.", "The instrument of {name} is the {value}.", _INSTRUMENTS),
        _Attribute("What pet does {name} keep?", "Which animal lives with {name} as a pet?",
                   "{name} keeps a {value} as a pet.", "The pet of {name} is a {value}.", _ANIMALS),
    )


def _person_items(rng: random.Random, name: str, attributes: Sequence[_Attribute]) -> list[QAItem]:
    items = []
    for attribute in attributes:
        value = rng.choice(attribute.values)
        wrong = rng.sample([v for v in attribute.values if v != value], _PERTURBED_PER_ITEM)
        items.append(QAItem(
            question=attribute.question.format(name=name),
            answer=attribute.answer.format(name=name, value=value),
            paraphrased_question=attribute.paraphrased_question.format(name=name),
            paraphrased_answer=attribute.paraphrased_answer.format(name=name, value=value),
            perturbed_answers=tuple(attribute.answer.format(name=name, value=w) for w in wrong),
            group=name,
        ))
    return items


def make_corpus(*, seed: int, n_forget: int, n_retain: int, n_holdout: int) -> Corpus:
    """Generate ``n_forget``/``n_retain``/``n_holdout`` fictitious facts, disjoint by person.

    The same seed gives the same corpus. Each person contributes one item per attribute (five);
    a split whose size is not a multiple of five takes a prefix of its last person's items.
    """
    for label, count in (("n_forget", n_forget), ("n_retain", n_retain), ("n_holdout", n_holdout)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{label} must be a positive integer, got {count!r}")
    rng = random.Random(f"unlearning-corpus-{seed}")
    taken: set[str] = set()
    cities = _made_up_words(rng, 24, 3, taken)
    attributes = _attributes(cities)
    per_person = len(attributes)
    sizes = (n_forget, n_retain, n_holdout)
    people = sum(-(-size // per_person) for size in sizes)
    if people > 900:
        raise ValueError(f"at most {900 * per_person} items per split set, asked for {sum(sizes)}")
    first_names = _made_up_words(rng, 60, 2, taken)
    last_names = _made_up_words(rng, 60, 3, taken)
    names = rng.sample([f"{first} {last}" for first in first_names for last in last_names], people)
    splits: list[list[QAItem]] = []
    cursor = 0
    for size in sizes:
        count = -(-size // per_person)
        items = [item for name in names[cursor:cursor + count]
                 for item in _person_items(rng, name, attributes)]
        splits.append(items[:size])
        cursor += count
    return Corpus(forget=splits[0], retain=splits[1], holdout=splits[2])


def format_prompt(question: str, template: str = PROMPT_TEMPLATE) -> str:
    """The prompt for ``question`` under ``template`` (which must contain ``{question}``)."""
    return template.format(question=question)


def item_text(item: QAItem, template: str = PROMPT_TEMPLATE) -> str:
    """The full training text: the prompt, one space, the answer (or the passage alone)."""
    if not item.question:
        return item.answer
    return f"{format_prompt(item.question, template)} {item.answer}"


def _item_to_json(item: QAItem) -> dict[str, Any]:
    group = {"group": item.group} if item.group else {}
    if not item.question:
        return {"text": item.answer, **group}
    record: dict[str, Any] = {"question": item.question, "answer": item.answer, **group}
    if item.paraphrased_question:
        record["paraphrased_question"] = item.paraphrased_question
    if item.paraphrased_answer:
        record["paraphrased_answer"] = item.paraphrased_answer
    if item.perturbed_answers:
        record["perturbed_answers"] = list(item.perturbed_answers)
    return record


def write_jsonl(items: Iterable[QAItem], path: Path | str) -> None:
    """Write ``items`` as UTF-8 JSONL, one object per line, in the issue's field names."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(_item_to_json(item), ensure_ascii=False) + "\n")


def _string_field(record: dict[str, Any], key: str, line: int, *, required: bool) -> str:
    value = record.get(key, "")
    if key not in record and required:
        raise ValueError(f"line {line}: missing field {key!r}")
    if not isinstance(value, str):
        raise ValueError(f"line {line}: field {key!r} must be a string")
    return value


def item_from_json(record: Any, line: int = 1) -> QAItem:
    """Build a :class:`QAItem` from one decoded JSONL object; ``ValueError`` names the line."""
    if not isinstance(record, dict):
        raise ValueError(f"line {line}: expected a JSON object")
    known = {"question", "answer", "paraphrased_question", "paraphrased_answer", "perturbed_answers", "text",
             "group"}
    unknown = sorted(set(record) - known)
    if unknown:
        raise ValueError(f"line {line}: unknown fields {unknown}")
    group = _string_field(record, "group", line, required=False)
    if "text" in record:
        if set(record) - {"text", "group"}:
            raise ValueError(f"line {line}: a 'text' line carries no other fields but 'group'")
        text = _string_field(record, "text", line, required=True)
        if not text.strip():
            raise ValueError(f"line {line}: 'text' is empty")
        return QAItem(question="", answer=text, group=group)
    question = _string_field(record, "question", line, required=True)
    answer = _string_field(record, "answer", line, required=True)
    if not question.strip() or not answer.strip():
        raise ValueError(f"line {line}: 'question' and 'answer' must be non-empty")
    perturbed = record.get("perturbed_answers", [])
    if not isinstance(perturbed, list) or not all(isinstance(p, str) for p in perturbed):
        raise ValueError(f"line {line}: 'perturbed_answers' must be a list of strings")
    return QAItem(
        question=question,
        answer=answer,
        paraphrased_question=_string_field(record, "paraphrased_question", line, required=False),
        paraphrased_answer=_string_field(record, "paraphrased_answer", line, required=False),
        perturbed_answers=tuple(perturbed),
        group=group,
    )


def read_jsonl(path: Path | str) -> list[QAItem]:
    """Read a JSONL file written by :func:`write_jsonl` (or by hand); ``ValueError`` names the line."""
    items: list[QAItem] = []
    with Path(path).open("r", encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"line {number}: not valid JSON ({exc.msg})") from exc
            items.append(item_from_json(record, number))
    return items
