"""Training machinery shared by pre-training and fine-tuning: distributed set-up, checkpoint I/O."""
