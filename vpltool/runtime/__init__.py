"""How work is run: batches, background writers, ranks and shards."""
