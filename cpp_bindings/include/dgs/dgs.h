/* dgs: detect AI-generated images. The C API of the native core.
 *
 * A dgs_detector holds a verified model package, its preprocessing and an inference backend. Every function
 * returns a dgs_status; no C++ exception crosses this boundary. When a call fails, dgs_last_error(detector)
 * (or dgs_last_error(NULL) for a failed dgs_detector_create) gives a message naming the file and the problem.
 *
 * Thread safety: distinct detectors may be used from distinct threads at once. One detector must not be used
 * by two threads at the same time (its last error and its results' messages are per detector). The message of
 * dgs_last_error(NULL) is per thread.
 *
 * Strings returned by the library are owned by it: dgs_last_error(detector) and dgs_result_error stay valid until
 * the next call with that detector (or its destruction); dgs_last_error(NULL) until the calling thread's next call
 * without a detector.
 *
 * Options: always start from dgs_options_init, then change fields. A zeroed struct is not the defaults: its
 * threshold of 0 would label every image fake.
 */
#ifndef DGS_H
#define DGS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define DGS_API __declspec(dllexport)
#else
#define DGS_API __attribute__((visibility("default")))
#endif

typedef enum dgs_status {
  DGS_OK = 0,
  DGS_INVALID_ARGUMENT = 1,
  DGS_UNREADABLE_IMAGE = 2,
  DGS_IMAGE_TOO_LARGE = 3,
  DGS_IMAGE_TOO_SMALL = 4,
  DGS_MODEL_PACKAGE = 5,
  DGS_BACKEND_UNAVAILABLE = 6,
  DGS_INFERENCE = 7,
  DGS_IO = 8,
  DGS_INTERNAL = 9
} dgs_status;

typedef struct dgs_detector dgs_detector;

typedef struct dgs_options {
  const char* backend;   /* NULL or "": the first backend available ("tensorrt") */
  const char* precision; /* NULL or "auto": the backend's fastest variant; else "fp32", "fp16", "int8" */
  int device;            /* CUDA device ordinal */
  int batch_size;        /* images per backend call; 0: 32 */
  double threshold;      /* negative: the package's threshold */
  const char* cache_dir; /* NULL: $DGS_CACHE_DIR, $XDG_CACHE_HOME/dgs or ~/.cache/dgs */
} dgs_options;

/* One input's result. status is DGS_OK or why this input failed (the others are still scored);
 * dgs_result_error(detector, i) gives the message of result i of the detector's last detect call. */
typedef struct dgs_result {
  double probability; /* probability that the image is AI-generated */
  int fake;           /* 1 when probability >= the threshold */
  dgs_status status;
} dgs_result;

typedef struct dgs_image {
  const uint8_t* data; /* 8-bit RGB, row-major */
  int width;
  int height;
  size_t stride; /* bytes per row; 0: width * 3 */
} dgs_image;

DGS_API const char* dgs_version(void);
DGS_API const char* dgs_status_string(dgs_status status);
DGS_API void dgs_options_init(dgs_options* options);

DGS_API dgs_status dgs_detector_create(const char* package_path, const dgs_options* options, dgs_detector** out);
DGS_API void dgs_detector_destroy(dgs_detector* detector);
DGS_API const char* dgs_last_error(const dgs_detector* detector);

/* Batched detection: n inputs in, n results out (results has room for n), in input order. The call returns
 * DGS_OK when it ran, even if some inputs failed (see each result's status); another status when it could not
 * run at all (a null argument, the backend failed). */
DGS_API dgs_status dgs_detect_files(dgs_detector* detector, const char* const* paths, size_t n,
                                    dgs_result* results);
DGS_API dgs_status dgs_detect_encoded(dgs_detector* detector, const uint8_t* const* data, const size_t* sizes,
                                      size_t n, dgs_result* results);
DGS_API dgs_status dgs_detect_rgb(dgs_detector* detector, const dgs_image* images, size_t n, dgs_result* results);
/* The message of result `index` of the last detect call ("" when it succeeded); valid until the next call. */
DGS_API const char* dgs_result_error(const dgs_detector* detector, size_t index);

DGS_API double dgs_detector_threshold(const dgs_detector* detector);
DGS_API const char* dgs_detector_backend(const dgs_detector* detector);
DGS_API const char* dgs_detector_precision(const dgs_detector* detector);
DGS_API int dgs_detector_input_size(const dgs_detector* detector);

#ifdef __cplusplus
}
#endif

#endif /* DGS_H */
