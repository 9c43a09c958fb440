"""Text-to-LoRA training: the task generators, their batches and the T2L trainer."""
