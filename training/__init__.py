"""vs_iedvr.training: from video to a model file (data, degradations, loss, loop, metrics, export).

Run as `vs-iedvr-train ...` (or `python -m vs_iedvr.training ...`).
"""
