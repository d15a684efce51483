"""Re-hosted files: the Storage protocol, its implementations, signed URLs."""
