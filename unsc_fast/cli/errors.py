"""The command line's error for bad configs and values (shown as one line, exit 2)."""


class ConfigError(ValueError):
    """A bad config file or value."""
