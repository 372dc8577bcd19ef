"""The one exception type a user sees as a message rather than a traceback."""


class OneBertError(Exception):
    """A problem with the user's input (a file, a field, a flag).

    The CLI prints ``str(error)`` on one line and exits with status 2. Messages name the
    file (and the line or field where there is one) and say what is wrong, so that the
    user can fix it without reading our code.
    """
