"""Ray Serve inference: the prediction API with priorities, fallbacks and hot swaps."""
