"""Input limits, kept apart from the decoders so they can be set up before OpenCV loads."""

__all__ = ["MAX_PIXELS", "MAX_FILE_BYTES"]

# Same bound as Pillow's decompression-bomb error: a 13k x 13k image is accepted, a 14k x 14k one is not.
MAX_PIXELS = 178_956_970
# No image file worth scoring comes near this; it bounds what one worker reads into memory.
MAX_FILE_BYTES = 512 * 1024 * 1024
