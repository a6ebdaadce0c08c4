"""The evaluation lab: data sets, the paper's models, training, forget scenarios, metrics,
baselines and reports.

It imports the library core (``unsc_fast``) and never the command line; the core never
imports it. Its dependencies (scikit-learn, mlxtend, matplotlib) load only when used.
The language-model task (a TOFU-style corpus, its model and metrics) is :mod:`.lm`;
``transformers`` loads only when one of its functions needs it.
"""
