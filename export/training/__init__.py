"""Training SelM, SDAVS, AVS-Mamba and COMBO models: the official recipe per task (``recipe``), their losses
(``losses``), AVSBench clips (and COMBO's Maskiges) as batches (``data``) and the loop with validation,
best-checkpoint selection and resume (``trainer``; one ``Family`` entry per model family). The command line is
``python -m export.train``."""
