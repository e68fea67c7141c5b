"""Shared plumbing for the command-line demos: logging set-up and one-line user errors."""
import logging
import sys

# Errors a user can cause and fix (bad path, no network, wrong dtype, bad prompt...):
# they print one sentence and exit non-zero instead of a traceback.
USER_ERRORS = (ValueError, OSError, NotImplementedError)


def setup_logging(verbose=False):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_main(main, argv=None):
    """Run `main(argv)` and turn user errors into `error: <message>` on stderr with exit code 1."""
    try:
        main(argv)
    except USER_ERRORS as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
