"""What the ResNet-20 benchmark's scripts share on the command line; defines no flags.

A bad flag or argument is one line on stderr and exit status 2, as ``run.py``: absl's
``app.UsageError`` would print the script's help before it.
"""

import sys

from absl import flags

NAME = "fashion_mnist_resnet20"  # the stem of every file the benchmark's scripts write


def usage_error(message):
    """Writes ``message`` as one line on stderr and exits with status 2."""
    sys.stderr.write(f"FATAL Usage error: {' '.join(str(message).split())}\n")
    sys.exit(2)


def parse_flags(argv):
    """absl's parser (``app.run(main, flags_parser=parse_flags)``), a bad flag one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        sys.stderr.write(f"FATAL Flags parsing error: {' '.join(str(err).split())} (pass "
                         "--helpshort or --helpfull to see help on flags)\n")
        sys.exit(2)
