"""Turning a request into pixels: the Generator seam, the diffusers backend, tiny models, the worker.

``models`` never imports ``bot``, ``safety`` or ``discord``: the worker receives the safety policy and
the watermarker as arguments typed by the protocols declared in :mod:`models.types`.
"""
