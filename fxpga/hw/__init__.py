"""Amaranth accelerator engine (issue 3): nothing here yet."""
