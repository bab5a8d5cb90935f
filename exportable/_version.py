"""The one place the version lives: the package, the CLI, artifact metadata and the wheel read it."""

__version__ = "0.1.0"
