"""Video: sampled frames (PyAV, extra ``video``) and work-zone segments from per-frame probabilities."""
