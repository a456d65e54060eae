"""Input limits, kept apart from the decoders so they can be set up before OpenCV loads.

Every input dgs reads comes from outside (folders nobody curated, packages downloaded from the internet), so
each one has a bound on what reading it may cost: bytes read, pixels, bytes decoded, JSON size and depth.
"""

__all__ = [
    "MAX_PIXELS",
    "MAX_FILE_BYTES",
    "MAX_DECODED_BYTES",
    "DECODE_MEMORY",
    "MAX_FILE_BYTES_PER_PIXEL",
    "MAX_METADATA_BYTES",
    "MAX_JPEG_SEGMENTS",
    "MAX_JPEG_SCANS",
    "MAX_JPEG_SCAN_PIXELS",
    "MAX_PNG_CHUNKS",
    "MAX_TIFF_VALUES",
    "MAX_GIF_BLOCKS",
    "MAX_WEBP_CHUNKS",
    "MAX_INPUT_SIZE",
    "MAX_BATCH_BYTES",
    "MAX_READ_AHEAD_BYTES",
    "MAX_PACKAGE_BYTES",
    "MAX_MEMBER_BYTES",
    "MAX_MEMBERS",
    "MAX_MANIFEST_BYTES",
    "MAX_PACKAGE_CONTENT_BYTES",
    "MAX_ZIP_DIRECTORY_BYTES",
    "MAX_GRAPH_NODES",
    "SMOKE_CHECK_SECONDS",
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
# A file holds its pixels (at most 8 bytes each uncompressed, 16 with a bad encoder) and metadata (EXIF, ICC,
# XMP, a preview): anything beyond that is there to make a decoder work, like 100 MB of JPEG fill bytes.
MAX_FILE_BYTES_PER_PIXEL = 16
MAX_METADATA_BYTES = 16 * 1024**2
# A JPEG has a few dozen marker segments before its image data (a progressive one, a few hundred); a file
# with more is built to make the header walk slow. A progressive JPEG is decoded once per scan: encoders write
# about ten, and pixels x scans is bounded like twelve scans of an image at the pixel limit.
MAX_JPEG_SEGMENTS = 10_000
MAX_JPEG_SCANS = 100
MAX_JPEG_SCAN_PIXELS = 12 * MAX_PIXELS
# A PNG of the largest allowed file size in the 8 kB IDAT chunks libpng writes has about 65,000 chunks.
MAX_PNG_CHUNKS = 200_000
# GIF data comes in sub-blocks of up to 255 bytes: a 4000 x 4000 first frame has some 60,000 of them.
MAX_GIF_BLOCKS = 1_000_000
# RIFF chunks of a WebP: one per frame of an animation, and a few more.
MAX_WEBP_CHUNKS = 100_000
# Numbers in one field of a TIFF's first directory: strip and tile tables of large images hold a few thousand.
MAX_TIFF_VALUES = 250_000

# The model's square input side: CLIP-family detectors use 224 to 518; larger inputs only cost memory.
MAX_INPUT_SIZE = 1024
# One inference batch (float32 [B, 3, S, S]) never exceeds this, whatever batch size is asked for: 445 images
# of 224 x 224. It bounds the read-ahead of a stream too (two batches of 8-bit crops).
MAX_BATCH_BYTES = 256 * 1024**2
# In-memory inputs (arrays, encoded bytes) a stream may hold ahead of the model, whatever their number.
MAX_READ_AHEAD_BYTES = 512 * 1024**2

# A `.dgs` package: the zip itself, one member (protobuf cannot hold more than 2 GiB, so no ONNX graph without
# external data is larger), the number of members and the manifest.
MAX_PACKAGE_BYTES = 8 * 1024**3
MAX_MEMBER_BYTES = 2 * 1024**3
MAX_MEMBERS = 64
MAX_MANIFEST_BYTES = 1024**2
# All members together (model variants included), and the zip's central directory.
MAX_PACKAGE_CONTENT_BYTES = 4 * 1024**3
MAX_ZIP_DIRECTORY_BYTES = 1024**2
# An exported ViT-L/14 has about 2,000 nodes.
MAX_GRAPH_NODES = 100_000
# The run of a new package's model on two grey images at load; a real detector takes seconds even on a small CPU.
SMOKE_CHECK_SECONDS = 120.0
