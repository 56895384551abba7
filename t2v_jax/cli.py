"""What every script does first: keep the console for progress bars and results."""

import sys

from absl import logging


def quiet_library_logs():
    """Orbax and tensorflow-datasets log every checkpoint and dataset lookup at INFO; scripts show
    warnings and errors only unless --verbosity is given."""
    if not any(arg.startswith(("--verbosity", "-v")) for arg in sys.argv[1:]):
        logging.set_verbosity(logging.WARNING)
