"""The bottom layer: errors, atomic file output, checkpoint files, paths, file digests, the synthetic-data
marker, and the declared order of the package's layers (:mod:`refers.base.layers`).

Everything else in ``refers`` may import from here; nothing here imports from the rest of ``refers``.
"""
