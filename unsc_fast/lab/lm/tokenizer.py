"""A word-level tokenizer built from the corpus itself: nothing is downloaded.

Words and punctuation are split apart (``tokenizers``' ``Whitespace`` pre-tokenizer: runs of
word characters, runs of other non-space characters), and every distinct piece of the texts
becomes one token. The vocabulary is small (about a thousand tokens) and every fact value of
the corpus is whole tokens, so a tiny model memorises it quickly. ``<bos>`` is prepended to
every encoded text (as LLaMA tokenizers do), ``<eos>`` ends answers, ``<pad>`` pads and
``<unk>`` stands for words outside the corpus.
"""
from __future__ import annotations

from collections.abc import Iterable

PAD, EOS, UNK, BOS = "<pad>", "<eos>", "<unk>", "<bos>"
SPECIAL_TOKENS = (PAD, EOS, UNK, BOS)


def build_tokenizer(texts: Iterable[str]):
    """A ``transformers.PreTrainedTokenizerFast`` whose vocabulary is every word and
    punctuation run of ``texts`` (in first-seen order, after the special tokens, so equal
    texts give equal ids). ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` round-trip
    it."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    vocab: dict[str, int] = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for text in texts:
        for piece, _ in pre.pre_tokenize_str(text):
            vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    # decoding joins pieces with spaces ("born in 1954 ."): used only for display and for
    # ROUGE, which compares words
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS,
                                   unk_token=UNK, bos_token=BOS)


def corpus_tokenizer(corpus):
    """:func:`build_tokenizer` over a :class:`~.corpus.Corpus`: its texts (all answers,
    perturbed and IDK ones included) and the prompt's words."""
    from .prompt import format_prompt
    return build_tokenizer([format_prompt(""), *corpus.texts()])
