"""The plugin's Python dependencies: the check (:mod:`.check`) and the pip installer (:mod:`.pip_install`).

Standard library only, so that it imports (and explains) when numpy or anything else is missing.
"""

from .check import *  # noqa: F401,F403
from .check import __all__ as _check_names
from .pip_install import *  # noqa: F401,F403
from .pip_install import __all__ as _install_names

__all__ = [*_check_names, *_install_names]
