"""The experiment runner: builds each variant's cluster and drives real tools."""
