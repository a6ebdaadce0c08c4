"""QA pairs as causal-LM batches, the LM unlearning task, and a user's own data and model.

The batch contract (shared by training, the unlearning methods and the metrics): a dict of
LongTensors ``input_ids`` [B, T], ``attention_mask`` [B, T] (1 = real token; right padding)
and ``labels`` [B, T], equal to ``input_ids`` on the answer tokens and the EOS that ends the
answer, -100 elsewhere (prompt and padding). Labels are not shifted: a Hugging Face causal LM
shifts them itself.
"""
from __future__ import annotations

import contextlib

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .corpus import CORPUS_SIZES, IDK_ANSWERS, Corpus, QAPair, make_corpus
from .prompt import format_prompt

IGNORE = -100


def encode_pair(tokenizer, question: str, answer: str, max_length: int | None = None
                ) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` (lists) for one prompt + answer + EOS.

    The text is tokenized whole and the prompt's tokens are found as its prefix, so a BPE
    tokenizer merges across the boundary as it would at inference; if the prompt is not a
    prefix (a merge across the space), prompt and answer are tokenized apart and joined.
    A sequence longer than ``max_length`` loses answer tokens from the end.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token; set tokenizer.eos_token")
    prompt = format_prompt(question)
    p_ids = _strip_eos(tokenizer(prompt).input_ids, eos)
    ids = _strip_eos(tokenizer(f"{prompt} {answer}").input_ids, eos)
    if ids[:len(p_ids)] != p_ids or len(ids) == len(p_ids):
        ids = p_ids + tokenizer(f" {answer}", add_special_tokens=False).input_ids
    ids = ids + [eos]
    if max_length is not None and len(ids) > max_length:
        if max_length <= len(p_ids):
            raise ValueError(f"the prompt of {question!r} has {len(p_ids)} tokens, no room"
                             f" for an answer within max_length={max_length}")
        ids = ids[:max_length]
    return {"input_ids": ids, "labels": [IGNORE] * len(p_ids) + ids[len(p_ids):]}


def encode_prompt(tokenizer, question: str) -> list[int]:
    """The token ids of ``question``'s prompt (special tokens such as BOS included, no EOS):
    what generation is conditioned on."""
    return _strip_eos(tokenizer(format_prompt(question)).input_ids, tokenizer.eos_token_id)


def _strip_eos(ids: list[int], eos: int) -> list[int]:
    # some tokenizers (e.g. T5-style post-processors) end every text with EOS; the answer's
    # EOS is appended once, explicitly
    return list(ids[:-1]) if ids and ids[-1] == eos else list(ids)


def collate(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded examples into one batch of the contract."""
    n = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        k = len(e["input_ids"])
        ids[i, :k] = torch.tensor(e["input_ids"])
        labels[i, :k] = torch.tensor(e["labels"])
        mask[i, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pad_id_of(tokenizer) -> int:
    """The pad id (the EOS id for tokenizers without a pad token, e.g. LLaMA's)."""
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return pid


def make_loader(tokenizer, pairs: Sequence[QAPair], *, batch_size: int = 32,
                shuffle: bool = False, seed: int = 0, answers: Sequence[str] | None = None,
                max_length: int | None = None) -> DataLoader:
    """A DataLoader of contract batches over ``pairs`` (their ``answer``, or ``answers[i]``
    in its place: e.g. IDK or paraphrased answers). ``shuffle`` is seeded by ``seed``: the
    same seed gives the same order every epoch sequence."""
    if answers is not None and len(answers) != len(pairs):
        raise ValueError(f"{len(answers)} answers for {len(pairs)} pairs")
    if not pairs:
        raise ValueError("no QA pairs to load")
    texts = answers if answers is not None else [p.answer for p in pairs]
    examples = [encode_pair(tokenizer, p.question, a, max_length) for p, a in zip(pairs, texts)]
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(examples, batch_size=batch_size, shuffle=shuffle, generator=gen,
                      collate_fn=functools.partial(collate, pad_id=pad_id_of(tokenizer)))


@dataclass
class QATask:
    """What an LM unlearning job works on: the tokenizer and the QA pairs of each split.

    ``retain_eval`` is the part of ``retain`` the metrics read (TOFU evaluates a retain subset
    as large as the forget set); ``idk_answers`` are the IDK baseline's targets; ``info``
    says how the task was made (JSON-able; part of the model cache's key).
    """

    tokenizer: object
    forget: list[QAPair]
    retain: list[QAPair]
    holdout: list[QAPair] = field(default_factory=list)
    retain_eval: list[QAPair] = field(default_factory=list)
    idk_answers: tuple[str, ...] = IDK_ANSWERS
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.retain_eval:
            self.retain_eval = subsample(self.retain, len(self.forget), seed=0)

    @property
    def train(self) -> list[QAPair]:
        """Retain and forget pairs: what the original model learns."""
        return self.retain + self.forget

    def loader(self, split: str, *, batch_size: int = 32, shuffle: bool = False,
               seed: int = 0) -> DataLoader:
        """Contract batches of a split: ``"forget"``, ``"retain"``, ``"holdout"``,
        ``"retain_eval"`` or ``"train"``."""
        if split not in ("forget", "retain", "holdout", "retain_eval", "train"):
            raise ValueError(f"unknown split {split!r}")
        return make_loader(self.tokenizer, getattr(self, split), batch_size=batch_size,
                           shuffle=shuffle, seed=seed)


def subsample(pairs: Sequence[QAPair], n: int, seed: int = 0) -> list[QAPair]:
    """``n`` of ``pairs`` chosen with a seed, in their original order (all if fewer)."""
    if n >= len(pairs):
        return list(pairs)
    g = torch.Generator().manual_seed(seed)
    keep = sorted(torch.randperm(len(pairs), generator=g)[:n].tolist())
    return [pairs[i] for i in keep]


def task_from_corpus(corpus: Corpus, tokenizer, info: dict | None = None) -> QATask:
    """The :class:`QATask` of a built-in corpus."""
    return QATask(tokenizer, list(corpus.forget), list(corpus.retain), list(corpus.holdout),
                  idk_answers=corpus.idk_answers, info=dict(info or {}))


def make_task(size: str = "default", *, forget_fraction: float = 0.1,
              n_holdout: int | None = None, seed: int = 0) -> QATask:
    """The built-in task of a named size (:data:`~.corpus.CORPUS_SIZES` authors; 5 % or
    10 % forgotten, TOFU's forget05 / forget10): corpus, its tokenizer, splits."""
    from .tokenizer import corpus_tokenizer

    if size not in CORPUS_SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(CORPUS_SIZES)}")
    corpus = make_corpus(CORPUS_SIZES[size], forget_fraction=forget_fraction,
                         n_holdout=n_holdout, seed=seed)
    info = {"corpus": {"n_entities": CORPUS_SIZES[size], "forget_fraction": forget_fraction,
                       "n_holdout": n_holdout, "seed": seed}}
    return task_from_corpus(corpus, corpus_tokenizer(corpus), info)


def load_qa_jsonl(path: str | os.PathLike) -> list[QAPair]:
    """QA pairs from a JSONL file, one object a line: ``question`` and ``answer`` (strings),
    optionally ``paraphrased_answer`` (string) and ``perturbed_answers`` (list of strings).
    Blank lines are skipped; a bad line raises a ``ValueError`` naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"QA file {str(p)!r} does not exist")
    out = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                out.append(_parse_line(line, f"{p}:{n}"))
    if not out:
        raise ValueError(f"{p}: no QA pairs (empty file)")
    return out


def _parse_line(line: str, where: str) -> QAPair:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("question", "answer"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise ValueError(f"{where}: {key!r} must be a non-empty string")
    para = obj.get("paraphrased_answer")
    if para is not None and not isinstance(para, str):
        raise ValueError(f"{where}: 'paraphrased_answer' must be a string")
    pert = obj.get("perturbed_answers", [])
    if not isinstance(pert, list) or not all(isinstance(a, str) for a in pert):
        raise ValueError(f"{where}: 'perturbed_answers' must be a list of strings")
    return QAPair(obj["question"], obj["answer"], para, tuple(pert))


def task_from_jsonl(tokenizer, forget: str | os.PathLike, retain: str | os.PathLike,
                    holdout: str | os.PathLike | None = None) -> QATask:
    """A :class:`QATask` from a user's JSONL files (see :func:`load_qa_jsonl`)."""
    return QATask(tokenizer, load_qa_jsonl(forget), load_qa_jsonl(retain),
                  load_qa_jsonl(holdout) if holdout is not None else [])


@contextlib.contextmanager
def quiet_hf():
    """No progress bars from ``(from|save)_pretrained`` inside the block: they show one
    ("Loading weights", "Writing model shards") even for a small local file."""
    from transformers.utils import logging as hf_logging
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_hf_model(path: str | os.PathLike, *, dtype: torch.dtype | None = None,
                  device: str | torch.device | None = None):
    """``(model, tokenizer)`` from a local Hugging Face model directory; nothing is fetched.

    A tokenizer without a pad token gets its EOS as pad (padding is masked anyway).
    """
    import transformers

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{str(p)!r} is not a Hugging Face model directory"
                                " (no config.json)")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(p, local_files_only=True)
        with quiet_hf():
            model = transformers.AutoModelForCausalLM.from_pretrained(
                p, local_files_only=True, **({"dtype": dtype} if dtype is not None else {}))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot load the model in {str(p)!r}: {first}") from None
    if tok.eos_token is None:
        raise ValueError(f"the tokenizer in {str(p)!r} has no eos token")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if device is not None:
        model = model.to(device)
    return model.eval(), tok
