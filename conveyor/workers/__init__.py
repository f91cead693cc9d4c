"""Worker entry modules (one per pool, for the `dramatiq` CLI) and the job lifecycle."""
