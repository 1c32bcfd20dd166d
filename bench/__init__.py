"""``make bench``: throughput, latency and correctness of the Predict hot path, against two ceilings."""
