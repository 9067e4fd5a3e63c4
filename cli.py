"""numpyconvnext command line: a thin click front over the library.

Heavy modules (numba, pandas, the model) are imported inside each command so that
`python cli.py --help` stays instant. User errors become one readable line and exit code 2.
"""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """A mistake the user can fix: printed as one line, exit code 2."""

    exit_code = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ConvNeXt for 1D market data: fetch candles, train, backtest, run live signals."""


if __name__ == "__main__":
    main()
