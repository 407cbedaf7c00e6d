"""The check stage: memory, time and cost feasibility, pins against the environment, the lock, the data check."""
