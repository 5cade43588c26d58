"""``python -m secrobust.train demo|train``: the training commands without the main CLI."""

import typer

from secrobust.train.commands import register

app = typer.Typer(add_completion=False, no_args_is_help=True)
register(app)

if __name__ == "__main__":
    app()
