"""The evaluation of seeded clustering against ground truth (the paper's protocol and more).

- :mod:`~histosic.evaluation.truth`: per-patch truth from a mask image or QuPath polygons;
- :mod:`~histosic.evaluation.protocol`: variants, simulated seed draws, the runs on one embedding;
- :mod:`~histosic.evaluation.report`: summaries, paired comparisons, Markdown, plots, pictures;
- :mod:`~histosic.evaluation.runner`: slides, cached embeddings, the whole run (the only part that
  embeds).

The numbers of record are in ``docs/EVALUATION.md``.
"""
