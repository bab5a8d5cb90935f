"""One exception per stage, so a failure names where it happened.

Every message is one line that names the problem and the fix; the CLI prints it as is.
"""


class ExportableError(Exception):
    """Base class. `exit_code` is what the CLI exits with."""

    stage = "exportable"
    exit_code = 1


class InputError(ExportableError):
    """Bad user input: options, paths, formats, tensors fed to an artifact."""

    stage = "input"
    exit_code = 2


class RecipeNotFound(InputError):
    stage = "registry"


class MissingDependency(InputError):
    stage = "environment"


class BuildError(ExportableError):
    stage = "build"


class ExportError(ExportableError):
    stage = "export"


class CheckError(ExportableError):
    stage = "check"


class ParityError(ExportableError):
    """The artifact does not answer as the original does. Carries the measured table."""

    stage = "verify"

    def __init__(self, message, table=None):
        super().__init__(message)
        self.table = table or ""
