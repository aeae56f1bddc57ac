"""``python -m pax.launch -n N [--timeout S] [--devices-per-process K] program.py args...``

Starts N local processes of one multi-process JAX run (see `pax.distributed.initialize`).
"""

import sys

from pax._src.launch import child_env as child_env
from pax._src.launch import free_port as free_port
from pax._src.launch import launch as launch
from pax._src.launch import main as main
from pax._src.launch import parse_args as parse_args

__all__ = ["child_env", "free_port", "launch", "main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
