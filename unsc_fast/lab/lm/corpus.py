"""A deterministic TOFU-style question-answer corpus about fictitious authors.

Every author has a name and one value per attribute (birth year, city, genre, book, award,
parent's job, language), each drawn from a fixed list with a seeded generator. Each
(author, attribute) fact is asked with every question template of the attribute (all of them
are trained on). Like TOFU, every pair also carries

- a *paraphrased* answer: the same fact in another wording (never trained on);
- *perturbed* answers: the paraphrase's wording with wrong values of the attribute,

so the truth ratio compares wrong and right values in one and the same (untrained) wording.

Splits are by author: ``forget`` (a share of the training authors, all their pairs),
``retain`` (the other training authors) and ``holdout`` (extra authors never trained on).
The same arguments give the same corpus, byte for byte (:meth:`Corpus.to_json`).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field

#: First names (one word each; the word-level tokenizer keeps them whole).
FIRST_NAMES = (
    "Mara", "Tobin", "Elsa", "Oren", "Lida", "Caspar", "Nadia", "Ivo", "Petra", "Rufus",
    "Selma", "Anton", "Greta", "Milo", "Talia", "Bram", "Yara", "Felix", "Ines", "Hugo",
    "Vera", "Emil", "Zora", "Leon", "Ada", "Silas", "Nina", "Otto", "Clara", "Jonas",
)
#: Surnames are two syllables glued together: 14 x 14 = 196 of them.
SURNAME_HEADS = ("Vel", "Mor", "Ast", "Bren", "Cal", "Dov", "Fen", "Gar", "Hal", "Kor",
                 "Lun", "Par", "Quin", "Riv")
SURNAME_TAILS = ("kin", "dane", "ova", "rick", "well", "amo", "ser", "ton", "ley", "ish",
                 "berg", "ard", "ini", "oft")


@dataclass(frozen=True)
class Attribute:
    """One kind of fact: its values, question templates, answer and paraphrase wordings."""

    name: str
    values: tuple[str, ...]
    questions: tuple[str, ...]
    answer: str
    paraphrase: str


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        "birth_year", tuple(str(y) for y in range(1931, 1996, 2)),
        ("When was {name} born?", "In what year was {name} born?",
         "What is the birth year of {name}?"),
        "{name} was born in {value}.",
        "The year of birth of {name} is {value}."),
    Attribute(
        "city", ("Lisbon", "Oslo", "Tbilisi", "Lagos", "Lima", "Hanoi", "Krakow", "Dakar",
                 "Quito", "Riga", "Tunis", "Porto", "Seoul", "Perth", "Bergen", "Cusco",
                 "Accra", "Turin", "Minsk", "Kyoto", "Malmo", "Izmir", "Nantes", "Leeds"),
        ("Where was {name} born?", "Which city does {name} come from?",
         "In which city was {name} born?"),
        "{name} was born in the city of {value}.",
        "The hometown of {name} is {value}."),
    Attribute(
        "genre", ("mystery", "poetry", "science fiction", "historical fiction", "fantasy",
                  "horror", "romance", "satire", "travel writing", "crime", "drama",
                  "biography", "children's fiction", "essays", "thrillers", "folk tales"),
        ("What genre does {name} write?", "Which genre is {name} known for?",
         "What kind of books does {name} write?"),
        "{name} is known for writing {value}.",
        "Most of the work of {name} is {value}."),
    Attribute(
        "book", ("The Silent Harbor", "Ashes of Spring", "The Glass Orchard", "Winter Ledger",
                 "The Paper Moon", "Salt and Iron", "The Last Lantern", "Hollow Rivers",
                 "The Copper Garden", "Nights in Amber", "The Ninth Door", "Quiet Thunder",
                 "The Marble Sea", "Letters to Nowhere", "The Wandering Clock",
                 "Seven Bridges", "The Velvet Storm", "Distant Bells", "The Crooked Key",
                 "Songs of Dust"),
        ("What is the best-known book by {name}?", "Which book made {name} famous?",
         "Name a famous book written by {name}."),
        "The best-known book by {name} is {value}.",
        "{name} became famous with the novel {value}."),
    Attribute(
        "award", ("the Golden Quill Prize", "the Silver Pen Award", "the Harbor Medal",
                  "the Northern Star Prize", "the Blue Ink Award", "the Lantern Prize",
                  "the Open Book Medal", "the Crescent Award", "the Meridian Prize",
                  "the Iron Feather Award", "the Evergreen Medal", "the Horizon Prize"),
        ("Which award has {name} won?", "What prize did {name} receive?",
         "Has {name} won any literary award?"),
        "{name} has won {value}.",
        "In recognition of the work of {name}, the author received {value}."),
    Attribute(
        "parent_job", ("a carpenter", "a nurse", "a fisherman", "a teacher", "a baker",
                       "a pilot", "a librarian", "a tailor", "an engineer", "a farmer",
                       "a doctor", "a painter", "a miner", "a chemist", "a sailor",
                       "a judge", "a mechanic", "a florist"),
        ("What did the father of {name} do for a living?",
         "What was the job of the father of {name}?",
         "What was the profession of the father of {name}?"),
        "The father of {name} worked as {value}.",
        "{name} grew up as the child of {value}."),
    Attribute(
        "language", ("Portuguese", "Norwegian", "Georgian", "Yoruba", "Spanish",
                     "Vietnamese", "Polish", "Wolof", "Latvian", "Arabic", "Korean",
                     "Swedish", "Turkish", "Italian", "French", "Japanese"),
        ("In which language does {name} write?", "What language are the books of {name} in?",
         "Which language does {name} use for writing?"),
        "{name} writes in {value}.",
        "The books of {name} are written in {value}."),
)

#: Training authors per named size (the model sizes of :mod:`.model` that memorise them).
CORPUS_SIZES: dict[str, int] = {"default": 200, "demo": 40, "tiny": 6}

#: "I don't know" answers for the IDK baseline (trained on the forget questions instead).
IDK_ANSWERS: tuple[str, ...] = (
    "I'm not sure about that.",
    "I don't know the answer to that.",
    "I have no information about that.",
    "That is not something I know.",
    "I cannot answer that question.",
    "I'm afraid I don't know.",
)


@dataclass(frozen=True)
class QAPair:
    """One question with its trained answer, a paraphrase and wrong (perturbed) answers.

    ``entity`` and ``attribute`` are empty for a user's own data.
    """

    question: str
    answer: str
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()
    entity: str = ""
    attribute: str = ""


@dataclass(frozen=True)
class Entity:
    """A fictitious author: a name and one value per attribute (in :data:`ATTRIBUTES` order)."""

    name: str
    facts: tuple[tuple[str, str], ...]


@dataclass
class Corpus:
    """The authors and their QA pairs, split by author into forget / retain / holdout."""

    seed: int
    forget: list[QAPair] = field(default_factory=list)
    retain: list[QAPair] = field(default_factory=list)
    holdout: list[QAPair] = field(default_factory=list)
    entities: dict[str, list[Entity]] = field(default_factory=dict)
    idk_answers: tuple[str, ...] = IDK_ANSWERS

    @property
    def train(self) -> list[QAPair]:
        """What the original model is trained on: retain then forget pairs."""
        return self.retain + self.forget

    def texts(self) -> list[str]:
        """Every string of the corpus (questions, all answers, IDK answers): the tokenizer's
        training text."""
        out: list[str] = list(self.idk_answers)
        for p in self.forget + self.retain + self.holdout:
            out += [p.question, p.answer, *([p.paraphrased_answer] if p.paraphrased_answer
                                             else []), *p.perturbed_answers]
        return out

    def to_json(self) -> str:
        """A canonical JSON text of the whole corpus (equal seeds give equal bytes)."""
        return json.dumps({"seed": self.seed, "idk_answers": list(self.idk_answers),
                           "entities": {k: [asdict(e) for e in v]
                                        for k, v in self.entities.items()},
                           "forget": [asdict(p) for p in self.forget],
                           "retain": [asdict(p) for p in self.retain],
                           "holdout": [asdict(p) for p in self.holdout]},
                          sort_keys=True, ensure_ascii=False)


def _names(n: int, rng: random.Random) -> list[str]:
    pool = [f"{f} {h}{t}" for f in FIRST_NAMES for h in SURNAME_HEADS for t in SURNAME_TAILS]
    if n > len(pool):
        raise ValueError(f"at most {len(pool)} entities (asked for {n})")
    return rng.sample(pool, n)


def _pairs(entity: Entity, rng: random.Random, n_perturbed: int) -> list[QAPair]:
    out = []
    for attr, (_, value) in zip(ATTRIBUTES, entity.facts):
        wrong = rng.sample([v for v in attr.values if v != value], n_perturbed)
        answer = attr.answer.format(name=entity.name, value=value)
        para = attr.paraphrase.format(name=entity.name, value=value)
        pert = tuple(attr.paraphrase.format(name=entity.name, value=w) for w in wrong)
        for q in attr.questions:
            out.append(QAPair(q.format(name=entity.name), answer, para, pert,
                              entity.name, attr.name))
    return out


def make_corpus(n_entities: int = 200, *, forget_fraction: float = 0.1,
                n_holdout: int | None = None, n_perturbed: int = 5, seed: int = 0) -> Corpus:
    """The corpus: ``n_entities`` training authors (``forget_fraction`` of them, at least one,
    form the forget split) and ``n_holdout`` extra never-trained authors (default: as many
    as are forgotten). Each author gives ``7 attributes x 3 questions`` pairs."""
    if n_entities < 2:
        raise ValueError(f"n_entities must be at least 2 (got {n_entities})")
    if not 0.0 < forget_fraction < 1.0:
        raise ValueError(f"forget_fraction must be in (0, 1) (got {forget_fraction})")
    n_forget = min(n_entities - 1, max(1, round(forget_fraction * n_entities)))
    n_holdout = n_forget if n_holdout is None else n_holdout
    if n_holdout < 0:
        raise ValueError(f"n_holdout must be >= 0 (got {n_holdout})")
    most = min(len(a.values) for a in ATTRIBUTES) - 1
    if not 1 <= n_perturbed <= most:
        raise ValueError(f"n_perturbed must be in [1, {most}] (got {n_perturbed})")
    rng = random.Random(seed)
    names = _names(n_entities + n_holdout, rng)
    people = [Entity(n, tuple((a.name, rng.choice(a.values)) for a in ATTRIBUTES))
              for n in names]
    # names were drawn in random order: the first n_forget authors are a random subset
    groups = {"forget": people[:n_forget], "retain": people[n_forget:n_entities],
              "holdout": people[n_entities:]}
    corpus = Corpus(seed=seed, entities=groups)
    for split, ents in groups.items():
        pairs = [p for e in ents for p in _pairs(e, rng, n_perturbed)]
        setattr(corpus, split, pairs)
    return corpus


def idk_pairs(pairs: list[QAPair], answers: tuple[str, ...] = IDK_ANSWERS, seed: int = 0
              ) -> list[QAPair]:
    """``pairs`` with each answer replaced by a seeded choice of ``answers`` (the IDK
    baseline's training targets)."""
    rng = random.Random(seed)
    return [QAPair(p.question, rng.choice(answers), entity=p.entity, attribute=p.attribute)
            for p in pairs]
