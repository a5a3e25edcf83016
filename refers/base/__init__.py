"""The bottom layer: errors, atomic file output, checkpoint files, paths and the synthetic-data marker.

Everything else in ``refers`` may import from here; nothing here imports from the rest of ``refers``.
"""
