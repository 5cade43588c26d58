"""``python -m secrobust.deploy <command>``: the deployment commands without the rest of the CLI."""

from .commands import main

main()
