"""The job lifecycle: one internal model every public endpoint builds, one service running it."""
