"""Background threads of the web process: the outbox sweeper and the submission batcher."""
