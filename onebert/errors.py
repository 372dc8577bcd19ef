"""The one exception type a user sees as a message rather than a traceback."""


class OneBertError(Exception):
    """A problem with the user's input (a file, a field, a flag).

    The CLI prints ``str(error)`` on one line and exits with status 2. Messages name the
    file (and the line or field where there is one) and say what is wrong, so that the
    user can fix it without reading our code.
    """


def show_value(value: object, limit: int = 60) -> str:
    """repr() cut to `limit` characters, so a hostile value keeps an error message on one short line.

    Here rather than in the CLI: onebert.ranges (imported by the library's config classes) needs it, and the
    library must not import the command line."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4300 digits has no repr
        return "a very long integer"
    return text if len(text) <= limit else text[:limit - 3] + "..."
