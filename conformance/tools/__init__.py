"""The ``rmsnorm-conformance`` command: tools that read, compare and plot results files
(``pytest --rmsnorm-results PATH``), sweep MLX releases and benchmark implementations.

One module per subcommand, listed in ``cli.COMMANDS``. Nothing here imports the conformance
properties (``conformance/test_*.py``) or Hypothesis: the tools work from results files alone.
"""
