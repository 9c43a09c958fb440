"""Evaluating what the hypernetworks and collections do: D2L, T2L, prose and collection-size reports."""
