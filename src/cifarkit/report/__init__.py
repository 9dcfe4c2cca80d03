"""Insight into trained runs: metrics, explanations, calibration, robustness and an HTML report.

Every analysis is a plain function over arrays or a model, so it can be used from
Python directly; :func:`cifarkit.report.html.build_report` only assembles them,
writes each section's files into ``RUN/insight/`` and one self-contained HTML page.

Modules:

* ``metrics``      confusion matrix, classification report, accuracy
* ``analysis``     most confused class pairs, top losses, random prediction samples
* ``calibration``  expected calibration error, reliability bins, temperature scaling
* ``gradcam``      Grad-CAM heat maps with forward/backward hooks
* ``corruptions``  noise, blur, JPEG, brightness and contrast at severities 1..5
* ``robustness``   accuracy of a model under those corruptions
* ``plots``        the matplotlib figures (Agg, no pyplot state)
* ``rundir``       reading a run directory
* ``files``        figures as PNG bytes, saved atomically
* ``markup``       escaped HTML pieces; ``sections`` one function per report section
* ``options``      ``ReportOptions``: sample sizes and seed
* ``html``         ``build_report``; ``command`` holds the CLI arguments
"""
