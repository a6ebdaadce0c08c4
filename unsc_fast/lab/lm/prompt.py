"""The prompt format shared by training, unlearning and evaluation."""
from __future__ import annotations

#: A question becomes ``Question: ...\nAnswer:``; the answer follows after one space.
PROMPT = "Question: {question}\nAnswer:"


def format_prompt(question: str) -> str:
    """The prompt for ``question`` (what the model is conditioned on; never labelled)."""
    return PROMPT.format(question=question)
