"""Command-line tools that inspect models without training them (`python -m mbt.tools.flops`)."""
