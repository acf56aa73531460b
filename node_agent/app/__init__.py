"""The composition root: the agent, health, metrics, status, logs."""
