"""Records, statistics, agreement, plots, diagrams and the report of a run."""
