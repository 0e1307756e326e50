"""Named crash points, for the fault-injection tests: the process kills itself where told to.

`crash_point("activate.after_switch")` does nothing unless the environment variable
`INBO_CRASH_AT` names that point, in which case the process sends itself SIGKILL there: no
`finally`, no lock release, no flush, exactly as a killed worker or an out-of-memory kill would
end it. The tests run a real step in a subprocess with the variable set and check what the crash
left behind; production never sets it. Point names: `<step>.<moment>`, listed in
`tests/test_faults.py`.
"""

from __future__ import annotations

import os
import signal

CRASH_AT = "INBO_CRASH_AT"


def crash_point(name: str) -> None:
    """Die here, at once and uncleanly, if `INBO_CRASH_AT` is `name`."""
    if os.environ.get(CRASH_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
