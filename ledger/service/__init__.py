"""What a server does with tasks, whatever the wire: the task service, its live view, replay and queries."""
