"""The runtime's log lines on stderr, each written whole.

Every rank writes to the stderr it inherited from the launcher. print() writes the text and its
newline in two writes, so two ranks starting together could run their lines into one ("... 2
processesftspec: rank 1/2 ..."), and a reader of the log (a person, a test) lost a line. One write
per line keeps them apart.
"""

from __future__ import annotations

import sys


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
