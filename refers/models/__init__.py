"""Models: the ViT image encoder, weight loading/conversion, and the REFERS pre-training model."""
