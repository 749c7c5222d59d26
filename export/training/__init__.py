"""Training SelM-family models: the official recipe per task (``recipe``), its losses (``losses``), AVSBench clips
as batches (``data``) and the loop with validation, best-checkpoint selection and resume (``trainer``).
The command line is ``python -m export.train``."""
