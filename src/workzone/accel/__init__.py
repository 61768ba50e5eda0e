"""The torch fast path ([gpu] extra): ONNX graphs run as torch modules, batched JPEG decode on the device.

Nothing here is imported by :mod:`workzone.stages` at import time; torch and torchvision are
imported inside the functions that need them.

Modules:
    onnx_graph   an ONNX file -> a torch module holding the same weights (one source of truth)
    runner       a model on a device: dtype, channels-last, optional ``torch.compile``, batch buckets
    decode       JPEG bytes -> uint8 tensors on the device (nvJPEG on CUDA), resize to model inputs
    device_image an :class:`~workzone.types.Image` look-alike whose pixels stay on the device
"""
