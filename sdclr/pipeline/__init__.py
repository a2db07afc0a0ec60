"""The pipeline around the science: what makes a result trustworthy and easy to re-make, and
nothing that decides a number by itself.

Stage plumbing (:mod:`.stage`, :mod:`.parallel`, :mod:`.dvc_stages`, :mod:`.presets`), the
portable numerics and the CPU fingerprint (:mod:`.numerics`, :mod:`.fingerprint`, :mod:`.compare`)
and what is recorded about a run (:mod:`.tracking`, :mod:`.cost`). The science (methods, models,
data, losses, training and evaluation) sits one level up, in :mod:`sdclr`; the files both write
safely are :mod:`sdclr.storage`.
"""
