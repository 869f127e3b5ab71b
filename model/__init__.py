"""dbert_model: the DiffusionBERT denoiser, training, generation and evaluation (issue 3)."""
