"""Training and evaluating the hypernetworks (Doc-to-LoRA and Text-to-LoRA), offline on synthetic data."""
