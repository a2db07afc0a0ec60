"""SDCLR reproduction pipeline: the core package.

Everything with logic lives here; the scripts in ``stages/`` only parse arguments,
load ``params.yaml`` through :mod:`sdclr.config` and call into this package.
Heavy imports (mlflow, matplotlib) are done lazily inside the modules that need them.
"""

from sdclr.errors import SdclrError

__all__ = ["SdclrError"]
__version__ = "0.1.0"
