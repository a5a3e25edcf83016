"""Data preparation: lists, labels, ``dataset.yaml`` and prepared images from the official downloads.

One module per dataset (:mod:`~refers.prepare.mimic`, :mod:`~refers.prepare.nih`,
:mod:`~refers.prepare.shenzhen`, :mod:`~refers.prepare.covid`, :mod:`~refers.prepare.vinbig`) and
the parts they share: :mod:`~refers.prepare.common` (output guards, provenance, parallel map),
:mod:`~refers.prepare.layout` (default folders, finding images), :mod:`~refers.prepare.splits`,
:mod:`~refers.prepare.fractions`, :mod:`~refers.prepare.reports` (report sections),
:mod:`~refers.prepare.images` (the resumable resize / conversion cache) and
:mod:`~refers.prepare.check`. The command line is :mod:`refers.cli.prepare`.
"""
