"""The tools that drive the pipeline from above: they run DVC, SLURM and the comparison, and
import the science; nothing of the science imports them.

The parallel runner (:mod:`.parallel`) and its SLURM launcher (:mod:`.slurm`), dvc.yaml's writer
(:mod:`.dvc_stages`), presets and experiments (:mod:`.presets`, :mod:`.experiment`), and the
check of a run against the committed one (:mod:`.compare`, with the CPU's :mod:`.fingerprint`).
What a stage calls while it runs sits below the science, in :mod:`sdclr.runtime`.
"""
