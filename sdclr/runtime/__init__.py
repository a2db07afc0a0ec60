"""What a stage calls while it runs, below the science: the portable numerics pinned before torch
loads (:mod:`.numerics`), a cluster job's time-limit warning (:mod:`.time_limit`), the one place
that talks to MLflow (:mod:`.tracking`) and the machine-dependent timings file (:mod:`.cost`).
None of it imports the science; the science and the stages import it.
"""
