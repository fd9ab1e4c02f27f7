"""User-facing errors.

`UsageError` is the one exception type the CLI turns into a single line on stderr and exit
code 2. Library code raises it for anything the *user* got wrong (a bad flag, a missing file, a
damaged model) with a message that names the problem and says how to fix it. Programming errors
stay ordinary exceptions so their tracebacks are not hidden.
"""


class UsageError(Exception):
    """Bad input from the user: the message is shown as-is, and the process exits with 2."""
