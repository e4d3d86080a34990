"""`python -m photogenic` is the `photogenic` command."""

from photogenic.cli import main

main()
