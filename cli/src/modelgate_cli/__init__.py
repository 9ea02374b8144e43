"""The `modelgate` command line for operators."""
