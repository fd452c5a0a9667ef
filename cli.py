"""The ``fieldhub`` command (``fieldhub = cli:main``, ``python -m cli``): the group is built in fieldhub/cli/."""

from __future__ import annotations

from fieldhub.cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
