"""What every stage shares and nothing else: the project's error type, atomic
file I/O, hashing and provenance, paths, strict params parsing, stage
summaries and MLflow set-up. It imports no other part of `tasks`."""
