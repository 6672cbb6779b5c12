"""streamcap: watch video and say what is in it."""

__version__ = "0.1.0"
