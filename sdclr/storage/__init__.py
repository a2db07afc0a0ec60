"""What the science reads and writes, safely: atomic, byte-deterministic files (:mod:`.io`), resume
checkpoints matched to their run (:mod:`.checkpoint`) and the trained encoder's file
(:mod:`.encoder_file`). The ground floor both the science and the pipeline stand on."""
