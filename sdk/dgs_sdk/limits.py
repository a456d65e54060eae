"""Input limits, kept apart from the decoders so they can be set up before OpenCV loads.

Every input dgs reads comes from outside (folders nobody curated, packages downloaded from the internet), so
each one has a bound on what reading it may cost: bytes read, pixels, bytes decoded, JSON size and depth.
"""

__all__ = [
    "MAX_PIXELS",
    "MAX_FILE_BYTES",
    "MAX_DECODED_BYTES",
    "DECODE_MEMORY",
    "MAX_JPEG_SEGMENTS",
    "MAX_INPUT_SIZE",
    "MAX_BATCH_BYTES",
    "MAX_PACKAGE_BYTES",
    "MAX_MEMBER_BYTES",
    "MAX_MEMBERS",
    "MAX_MANIFEST_BYTES",
]

# Same bound as Pillow's decompression-bomb error: a 13k x 13k image is accepted, a 14k x 14k one is not.
MAX_PIXELS = 178_956_970
# No image file worth scoring comes near this; it bounds what one worker reads into memory.
MAX_FILE_BYTES = 512 * 1024 * 1024
# The decoder's own buffer (width x height x channels x bytes per sample) may not exceed an 8-bit RGB image at
# the pixel limit: a 16-bit RGBA image pays for its 8 bytes per pixel (about 8,200 x 8,200 at most).
MAX_DECODED_BYTES = 3 * MAX_PIXELS
# What the decode workers of one process may hold at once, all together: each decode reserves twice its
# decoded size (the decoder's buffer and the 8-bit RGB copy) and waits while the budget is taken.
DECODE_MEMORY = 2 * 1024**3
# A JPEG has a few dozen marker segments before its image data (a progressive one, a few hundred); a file
# with more is built to make the header walk slow.
MAX_JPEG_SEGMENTS = 10_000

# The model's square input side: CLIP-family detectors use 224 to 518; larger inputs only cost memory.
MAX_INPUT_SIZE = 1024
# One inference batch (float32 [B, 3, S, S]) never exceeds this, whatever batch size is asked for: 445 images
# of 224 x 224. It bounds the read-ahead of a stream too (two batches of 8-bit crops).
MAX_BATCH_BYTES = 256 * 1024**2

# A `.dgs` package: the zip itself, one member (protobuf cannot hold more than 2 GiB, so no ONNX graph without
# external data is larger), the number of members and the manifest.
MAX_PACKAGE_BYTES = 8 * 1024**3
MAX_MEMBER_BYTES = 2 * 1024**3
MAX_MEMBERS = 64
MAX_MANIFEST_BYTES = 1024**2
