"""Cameras from a config file, and ``monitor`` on a Ray cluster.

``config`` (cameras.yaml) imports no Ray; ``driver`` and ``actor`` import it only when a run
asks for ``--ray``.
"""
