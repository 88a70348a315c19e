"""The one base class of the errors that mean bad input, not a bug.

Every binary (runtime/cli.py) reports an `Error` as one line naming the file, line, key or field, with a non-zero
exit; anything else that escapes is a bug and keeps its traceback. Modules define their own subclasses, usually
also deriving from the built-in class whose meaning they share (`class ConfigError(Error, ValueError)`), so callers
that catch ValueError keep working.
"""


class Error(Exception):
  """Bad input, a bad file or a bad config: reported to the user in one line."""
