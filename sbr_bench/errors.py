"""Errors caused by the user's input (config values, missing files or packages).

They are reported as one line with what is wrong and how to fix it, never as a traceback.
"""


class ConfigError(ValueError):
    """A value, file or package the job needs is wrong or missing."""
