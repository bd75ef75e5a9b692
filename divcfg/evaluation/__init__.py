"""`divcfg evaluate`: the quality–diversity evaluation of systems on held-out prompts.

Domain-agnostic: prompts, judges and the extra figures come from the domain (``divcfg.domains``: the
music testbed by default, ``--prompts FILE`` for text), generators from their plug-ins
(``divcfg.models.base``: built-in checkpoints, or ``hf:PATH`` transformers folders). Modules:
``config`` (EvalConfig, systems), ``stats`` (intervals, summaries, fronts), ``run`` (the run, CLI).
The music figures below are the music domain's (``divcfg.domains.music_eval``); the text domain's
are MiniLM diversity, prompt–completion similarity and ``distinct_2`` (``divcfg.domains.text``).

Systems (each one generator + a decoding rule):

- ``base``: the pre-trained model, plain conditional sampling (γ=1, τ=1);
- ``cfg``: the base model with classifier-free guidance at each γ of ``--cfg-gammas`` (2 passes/token);
- ``temperature``: the base model at each τ of ``--temperatures`` (the other cheap diversity knob);
- ``distilled`` (``--quality``, β=0) and ``diversity`` (``--diversity``, β=15): fine-tuned students;
- ``merge``: ``(1-λ)·A + λ·B`` for each λ of ``--lams`` (A, B default to the two students),
  evaluated in memory (``divcfg.merging.iter_merged_generators``).

Protocol. K held-out prompts (the domain's ``prompts("test", limit=K, seed=seed)``, the same for every
system) × G generations each. Every system samples its K·G rows in the same order and the same
batches of ``batch_size`` rows, from a ``torch.Generator`` seeded with ``seed`` (common random
numbers: differences between systems are not drowned by sampling noise). Two systems with the same
weights and decoding rule (e.g. the merge at λ=0 and the β=0 student) are sampled once.

Per system, with ``q_kg`` the alignment score of generation g of prompt k (−1 for an empty
or undecodable generation) and ``d_k`` the mean of ``1 − cos(E(y_kg), E(y_kh))`` over the
G(G−1)/2 pairs of prompt k (0 for a pair with an empty member):

- ``quality = mean_k mean_g q_kg``; ``diversity = mean_k d_k``;
- 95 % confidence intervals: percentile bootstrap over prompts (``bootstrap`` resamples of the K
  per-prompt values; prompts are the independent unit, the G generations of one prompt are not);
- independent diversity figures (pitch-class and onset-histogram distances, melodic-interval
  n-gram distance, distinct token n-gram ratio; ``divcfg.music.metrics``), averaged over the same pairs;
- ``empty_rate`` (no notes / undecodable), ``valid_rate`` (decodes, has notes, stays in the prompt's
  meter), ``eos_rate`` (the sequence ended itself), ``mean_length`` (tokens, EOS included);
- the MusPy-style metrics and ``musical_distance = mean_m |mean(m) − ref_mean(m)| / ref_std(m)``
  against the held-out corpus reference (``metrics.corpus_reference``);
- ``forward_passes_per_token`` (1, or 2 with CFG) and measured ``tokens_per_s`` (generated tokens /
  wall time of sampling, same batch size for every system, after an untimed warm-up).

Fronts: for each family (``cfg`` = base + γ sweep, ``temperature`` = base + τ sweep, ``merge``,
``finetuned``) the Pareto front on (quality, diversity) and its hypervolume w.r.t. one shared
reference point (``divcfg.pareto.reference_point`` over all systems). ``merge`` vs ``cfg``: coverage
both ways, set dominance, and the hypervolume difference with a paired bootstrap CI over prompts
(the reference point fixed).

Outputs in ``--out``: ``results.json`` (everything, with provenance and seeds), ``results.csv``
(one row per system) and ``samples.jsonl`` (token ids per system / prompt / generation).
"""

from divcfg.evaluation.config import FAMILY_ORDER, PRESETS, EvalConfig, System, build_systems, families, parse_floats
from divcfg.evaluation.run import add_arguments, evaluate, format_table, run, sample_system, write_outputs
from divcfg.evaluation.stats import bootstrap_ci, front_analysis

__all__ = ["FAMILY_ORDER", "PRESETS", "EvalConfig", "System", "build_systems", "families", "parse_floats",
           "add_arguments", "evaluate", "format_table", "run", "sample_system", "write_outputs", "bootstrap_ci",
           "front_analysis"]
