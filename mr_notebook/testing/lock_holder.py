"""Hold a store's index lock from another process: ``python -m mr_notebook.testing.lock_holder HOME [SECONDS]``.

Prints ``held`` once the lock is taken, then keeps it until a line (or EOF) arrives on stdin or SECONDS pass
(default 60), and prints ``released`` just before letting go. Tests use it to play the CLI that holds the
lock (a long ``rm``, ``tag`` or ``pull``) while a server must keep answering.
"""

from __future__ import annotations

import select
import sys

from mr_notebook.store import Store


def main(argv: list[str]) -> int:
    home, seconds = argv[0], float(argv[1]) if len(argv) > 1 else 60.0
    with Store(home).index_lock():
        sys.stdout.write("held\n")
        sys.stdout.flush()
        select.select([sys.stdin], [], [], seconds)  # a line, EOF, or the time limit
        sys.stdout.write("released\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
