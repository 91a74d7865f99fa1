"""Benchmarks of kdzero: cost of the space and the proxy, search quality, and the Table-3 reproduction."""
