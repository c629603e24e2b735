"""Put on PYTHONPATH of a child Python: the top-level modules named in RSVLM_TEST_BLOCK
(comma-separated) then fail to import, as if they were not installed."""

import os
import sys


class Blocker:
    """A meta-path finder that refuses some top-level modules."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


blocked = [n for n in os.environ.get("RSVLM_TEST_BLOCK", "").split(",") if n]
if blocked:
    sys.meta_path.insert(0, Blocker(blocked))
