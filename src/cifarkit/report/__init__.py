"""Insight into trained runs: explanations, calibration, robustness and an HTML report.

The report renders what :mod:`cifarkit.evaluate` wrote into ``RUN/eval/`` and adds analyses of the same
predictions (``calibration``, ``gradcam``, ``corruptions``/``robustness``), each a plain function usable from
Python; ``sections`` renders them, ``html`` assembles one self-contained page, ``command`` holds the CLI arguments.
"""
