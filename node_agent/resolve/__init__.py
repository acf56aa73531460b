"""What a query means: the cache and the resolver (cache, table, upstream)."""
