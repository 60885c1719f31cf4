"""The file pam_exec.so runs: ``PYTHON -I -S /path/to/invoker/pam_exec.py [options]``.

A script is compiled from source at every start; this one is a few lines, and
the hook itself (``invoker.hook``) is imported byte-compiled.  ``-I -S`` leave
the package off ``sys.path``: it is found from this file's location.
"""

import gc
import sys

# A short life that ends in _exit leaves the cyclic collector nothing to
# reclaim, and the collections the imports' burst of new objects would set
# off cost this login about a millisecond.
gc.disable()
sys.path.insert(0, __file__.rpartition("/")[0].rpartition("/")[0] or "/")

from invoker.hook import main  # noqa: E402

main()
