"""Running tools: the application object, a run's context and journal, and the worker that owns partitions."""
