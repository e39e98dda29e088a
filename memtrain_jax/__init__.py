"""memtrain_jax."""
