"""``python -m loadtests.suite``: see loadtests/suite/cli.py."""

from loadtests.suite.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
