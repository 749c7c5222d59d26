"""FP16 and INT8 with measured accuracy: calibration data, Q/DQ graphs, the sensitivity sweep, the records.

``python -m calibration --model-dir ART --data DIR`` (or ``export.build_engine --precision int8 --calibration
DIR``) adds INT8 Q/DQ graphs and the FP16 and INT8 accuracy to an artifact; see :mod:`calibration.calibrate`.
Modules: ``data`` (clip sources), ``streaming`` (clips through the graphs, recording feeds), ``int8``
(quantization), ``groups`` (module groups and the sweep), ``calibrate`` (the whole step).
"""
