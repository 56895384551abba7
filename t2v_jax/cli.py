"""What every script shares: quiet library logs, and errors a user can act on printed as one line.

  from t2v_jax import cli
  ...
  if __name__ == "__main__":
      cli.run(main)

A bad config field, a missing checkpoint or file, or an input the library rejects ends the script
with one line on stderr naming the field or path, and exit status 2; `--verbose` shows the traceback.
"""

import sys

from absl import app, flags, logging

_VERBOSE = flags.DEFINE_bool("verbose", False, "On an error, print the whole traceback instead of one line.")

# ConfigError is a ValueError; the library raises ValueError for inputs it rejects (a prompt over the
# caption budget, an unknown stage), FileNotFoundError for a missing checkpoint or folder.
USER_ERRORS = (ValueError, FileNotFoundError, ImportError)


def quiet_library_logs():
    """Orbax and tensorflow-datasets log every checkpoint and dataset lookup at INFO; scripts show
    warnings and errors only unless --verbosity is given."""
    if not any(arg.startswith(("--verbosity", "-v")) for arg in sys.argv[1:]):
        logging.set_verbosity(logging.WARNING)


def run(main):
    """`absl.app.run(main)` with quiet logs, and user errors as one line and exit status 2."""

    def guarded(argv):
        quiet_library_logs()
        try:
            return main(argv)
        except USER_ERRORS as error:
            if _VERBOSE.value:
                raise
            print(f"error: {error} (--verbose for the traceback)", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)
