"""Files on disk: the cleanup archive and the client's memory files."""
