"""Evaluation: encoding and cosine Spearman on STS pairs, the test suite, the layer x dims grid, the dev score."""
