"""Insight into trained runs: explanations, calibration, robustness and an HTML report.

The report builds on :mod:`cifarkit.evaluate`: it renders what evaluation wrote
into ``RUN/eval/`` (calling it for a run not evaluated yet) and adds analyses
of the same predictions. Every analysis is a plain function over arrays or a
model, so it can be used from Python directly; :func:`cifarkit.report.html.build_report`
only assembles them, writes each section's files into ``RUN/insight/`` and
one self-contained HTML page. Metrics of predictions live in
:mod:`cifarkit.analysis`, figures in :mod:`cifarkit.plots`, the run directory
in :mod:`cifarkit.runs`.

Modules:

* ``calibration``  temperature scaling
* ``gradcam``      Grad-CAM heat maps with forward/backward hooks
* ``corruptions``  noise, blur, JPEG, brightness and contrast at severities 1..5
* ``robustness``   accuracy of a model under those corruptions
* ``markup``       escaped HTML pieces; ``sections`` one function per report section
* ``options``      ``ReportOptions``: sample sizes and seed
* ``html``         ``build_report``; ``command`` holds the CLI arguments
"""
