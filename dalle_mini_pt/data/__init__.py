"""Data: encoded caption/code shards and the DataModules that read them."""
