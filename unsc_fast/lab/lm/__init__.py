"""Language-model unlearning (issue #14): a TOFU-style QA corpus about fictitious authors that
needs no download, its tokenizer, small LLaMA-style models and their training, the
TOFU / OpenUnlearning metrics, the methods compared on it, and the comparison harness.

Modules: :mod:`.corpus` (authors, QA pairs, splits), :mod:`.tokenizer` (word-level, built
from the corpus), :mod:`.data` (contract batches, :class:`~.data.QATask`, a user's JSONL data
and local Hugging Face model), :mod:`.model`, :mod:`.train` (training and the model cache),
:mod:`.metrics` (:func:`~.metrics.evaluate_lm`), :mod:`.methods` (UNSC and the baselines on
one budget, :class:`~.methods.LMTask`), :mod:`.compare` (seeds x methods, tables).
``transformers`` is imported only inside functions that need it.
"""
