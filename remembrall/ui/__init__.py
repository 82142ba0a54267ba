"""The browser UI a running pipeline serves (``ui`` in the config): Overview, Live, Label and
Learning pages, and ``remembrall report``'s self-contained HTML of the Learning page.

It sits beside ``stages`` (imports ``pipeline`` and below, never a stage): it reads the run's
status file, metrics, journal and exported samples, and talks to stages only through the
pipeline's own sockets (labels to ``label.labels``, commands to ``retrain.control``, the live
view from infer's ``preview`` side channel).
"""
