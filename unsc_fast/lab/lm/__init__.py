"""The language-model task (issue #14): a TOFU-style QA corpus about fictitious authors that
needs no download, its tokenizer, small LLaMA-style models, their training, and the
TOFU / OpenUnlearning metrics.

Modules: :mod:`.corpus` (authors, QA pairs, splits), :mod:`.tokenizer` (word-level, built
from the corpus), :mod:`.data` (contract batches, :class:`~.data.LMTask`, a user's JSONL data
and local Hugging Face model), :mod:`.model`, :mod:`.train` (training and the model cache),
:mod:`.metrics` (:func:`~.metrics.evaluate_lm`). ``transformers`` is imported only inside
functions that need it.
"""
