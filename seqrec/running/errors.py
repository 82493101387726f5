"""User-facing errors: one clear line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A problem with the user's input (file, column, config, id). The message says what to do.

    Always one line: whitespace runs (newlines in echoed names or values included) become one space.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def run_cli(main: Callable[[], None]) -> None:
    """Run an entry point; turn a UserError into `error: <message>` on stderr and exit status 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:   # a read or write the checks before it did not foresee (a full disk, a vanished file)
        print(f"error: {e.strerror or type(e).__name__}: {e.filename or e}; check the path, its permissions and "
              "free space", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; rerun (train_offline.py takes --resume)", file=sys.stderr)
        sys.exit(130)
