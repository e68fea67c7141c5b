"""Optional dependencies (setup.py's extras): a missing one is one sentence naming the extra to install."""
import importlib


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""


def require(module, extra):
    """Import and return `module`, which the `extra` extra installs."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(f"{module} is not installed; it comes with the '{extra}' extra: "
                                f"pip install -e .[{extra}]") from error
