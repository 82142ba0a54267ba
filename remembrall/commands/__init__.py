"""What the command line runs besides a pipeline (``fit-base``, ...): the top layer with the CLI,
free to use every layer below it."""
