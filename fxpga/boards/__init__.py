"""Board tops and bitstream builds (issue 5): nothing here yet."""
