"""The pipeline layer: from a profile, compute each paper section's results (cached) and write its
tables and figures. The paper layer (the flat modules of :mod:`cortex_nb`) is profile-free,
tensors in and tensors out; this package is where profiles, caches and outputs meet it.

- :mod:`.run` — the run composed once: ``setup``, VQGM -> token stores -> extractors ->
  evaluators (``compose`` -> ``Run``), token saliency values (``get_tsv``), ``SectionResult``.
- :mod:`.keys` — the cache keys (a digest of exactly what each cache depends on) and paths.
- one module per notebook / paper section, each with ``run(cfg) -> SectionResult`` (everything the
  notebook shows, tables and figures written) and the steps the notebook narrates:
  :mod:`.s00_vqgm` (§2.1, §4.1: toy world, tokenizer quality, prior samples, evaluators),
  :mod:`.s01_dataset` (§4.1.1), :mod:`.s02_extractors` (Table 1), :mod:`.s03_image_level`
  (Fig. 2, 3, 5), :mod:`.s04_concept_level` (Table 2, localisation), :mod:`.s05_editing`
  (Table 3, Fig. 4, 6), :mod:`.s06_browser` (the token browser's data).

Notebooks import these names from :mod:`cortex_nb` (its ``__all__``); ``python -m cortex_nb
SECTION`` calls the sections' ``run``. Importing this package imports none of its modules.
"""
