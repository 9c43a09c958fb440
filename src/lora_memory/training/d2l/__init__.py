"""Doc-to-LoRA training: synthetic and prose data, the curriculum trainer, the teacher and the per-document baseline."""
