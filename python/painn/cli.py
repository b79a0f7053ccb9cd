"""The ``painn`` command (``painn eval``, ``painn info``, ``painn bench``): runs the command
line program bundled with the package (``painn/bin/painn``, built by ``pip install
./python``). ``PAINN_CLI=/path/to/painn`` runs another build; in a source checkout without
an installed package, the crate's own ``target/release/painn`` is used."""

import os
import sys
from pathlib import Path


def executable() -> Path:
    """The painn program this command runs."""
    override = os.environ.get("PAINN_CLI")
    if override:
        return Path(override)
    here = Path(__file__).resolve().parent
    for candidate in (here / "bin" / "painn", here.parent.parent / "target" / "release" / "painn"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit(
        "painn: the command line program was not found next to the package "
        f"({here / 'bin' / 'painn'}); reinstall with `pip install ./python` from the "
        "repository, or set PAINN_CLI=/path/to/painn")


def main():
    program = executable()
    os.execv(program, [str(program)] + sys.argv[1:])


if __name__ == "__main__":
    main()
