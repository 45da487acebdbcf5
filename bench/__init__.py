"""The rolecall benchmark (`bench/run.py`): a package so its modules import each other by name."""
