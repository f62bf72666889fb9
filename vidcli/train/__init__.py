"""Training: one DeepSpeed launcher, one step loop, stages that plug in by functions."""
