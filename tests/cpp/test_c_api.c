/* The C API driven from C: create and destroy, every detect call, statuses, messages naming the input, NULL
 * arguments, a missing and a corrupt package, and the per-thread error of a failed create. Results are compared
 * with what dgs_sdk gives with ONNX Runtime for the same files (expected_clip.tsv, written by make_fixtures.py),
 * through the test-only mean backend.
 *
 *     dgs_c_api_test <fixtures folder>
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dgs/dgs.h"

#define MAX_FILES 64
#define TOLERANCE 1e-6
#define RESIZED_TOLERANCE 2e-3

static int failures = 0;

#define CHECK(condition, ...)                                          \
  do {                                                                 \
    if (!(condition)) {                                                \
      ++failures;                                                      \
      fprintf(stderr, "%s:%d: %s failed: ", __FILE__, __LINE__, #condition); \
      fprintf(stderr, __VA_ARGS__);                                    \
      fputc('\n', stderr);                                             \
    }                                                                  \
  } while (0)

static int starts_with(const char* text, const char* prefix) { return strncmp(text, prefix, strlen(prefix)) == 0; }
static int contains(const char* text, const char* part) { return strstr(text, part) != NULL; }

typedef struct expected_file {
  char path[1024];
  double probability; /* NAN on error */
  char status[32];
  int resized;
} expected_file;

static char fixtures[512];
static char clip[1024];

/* expected_clip.tsv: file, probability (empty on error), status name, 1 if a transform resizes it. */
static size_t read_expected(expected_file* files) {
  char name[1024], line[2048];
  snprintf(name, sizeof name, "%s/expected_clip.tsv", fixtures);
  FILE* in = fopen(name, "r");
  if (!in) {
    fprintf(stderr, "cannot read %s\n", name);
    exit(1);
  }
  size_t n = 0;
  while (n < MAX_FILES && fgets(line, sizeof line, in)) {
    char* fields[4] = {line, NULL, NULL, NULL};
    for (int f = 1; f < 4; ++f) {
      fields[f] = strchr(fields[f - 1], '\t');
      if (!fields[f]) break;
      *fields[f]++ = '\0';
    }
    if (!fields[3]) continue;
    expected_file* e = &files[n++];
    snprintf(e->path, sizeof e->path, "%s/photos/%s", fixtures, fields[0]);
    e->probability = *fields[1] ? strtod(fields[1], NULL) : NAN;
    snprintf(e->status, sizeof e->status, "%s", fields[2]);
    e->resized = atoi(fields[3]);
  }
  fclose(in);
  return n;
}

static unsigned char* read_file(const char* path, size_t* size) {
  FILE* in = fopen(path, "rb");
  if (!in) return NULL;
  fseek(in, 0, SEEK_END);
  long length = ftell(in);
  fseek(in, 0, SEEK_SET);
  unsigned char* data = malloc(length > 0 ? (size_t)length : 1);
  *size = length > 0 ? fread(data, 1, (size_t)length, in) : 0;
  fclose(in);
  return data;
}

static dgs_detector* open_clip(int batch_size) {
  dgs_options options;
  dgs_options_init(&options);
  options.backend = "test-mean";
  options.batch_size = batch_size;
  dgs_detector* detector = NULL;
  dgs_status status = dgs_detector_create(clip, &options, &detector);
  CHECK(status == DGS_OK, "%s", dgs_last_error(NULL));
  if (!detector) exit(1);
  return detector;
}

/* One result against dgs_sdk's for the same input. */
static void check_result(dgs_detector* detector, size_t i, const dgs_result* r, const expected_file* e,
                         const char* name) {
  const char* message = dgs_result_error(detector, i);
  if (strcmp(e->status, "ok") == 0) {
    CHECK(r->status == DGS_OK, "%s: %s", name, message);
    CHECK(strcmp(message, "") == 0, "%s: %s", name, message);
    double tolerance = e->resized ? RESIZED_TOLERANCE : TOLERANCE;
    CHECK(fabs(r->probability - e->probability) <= tolerance, "%s: %.17g, Python %.17g", name, r->probability,
          e->probability);
    CHECK(r->fake == (r->probability >= dgs_detector_threshold(detector)), "%s", name);
  } else {
    CHECK(strcmp(dgs_status_string(r->status), e->status) == 0, "%s: %s, Python %s", name,
          dgs_status_string(r->status), e->status);
    char prefix[1100];
    snprintf(prefix, sizeof prefix, "%s: ", name);
    CHECK(starts_with(message, prefix), "the message names %s: %s", name, message);
  }
}

static void test_version_and_statuses(void) {
  CHECK(strlen(dgs_version()) > 0, "empty version");
  CHECK(strcmp(dgs_status_string(DGS_OK), "ok") == 0, "%s", dgs_status_string(DGS_OK));
  CHECK(strcmp(dgs_status_string(DGS_UNREADABLE_IMAGE), "unreadable_image") == 0, "status name");
  CHECK(strcmp(dgs_status_string(DGS_INTERNAL), "internal") == 0, "status name");
  CHECK(strcmp(dgs_status_string((dgs_status)42), "unknown") == 0, "out of range");
  dgs_options options;
  memset(&options, 0x5A, sizeof options);
  dgs_options_init(&options);
  CHECK(options.backend == NULL && options.precision == NULL && options.cache_dir == NULL, "pointers not NULL");
  CHECK(options.batch_size == 0 && options.device == 0 && options.threshold < 0, "defaults");
  dgs_options_init(NULL);
}

static void test_create_failures(void) {
  dgs_detector* detector = (dgs_detector*)&detector; /* anything but NULL: a failed create sets it to NULL */
  char missing[1100];
  snprintf(missing, sizeof missing, "%s/packages/missing.dgs", fixtures);
  CHECK(dgs_detector_create(missing, NULL, &detector) == DGS_MODEL_PACKAGE, "%s", dgs_last_error(NULL));
  CHECK(detector == NULL, "out not cleared");
  CHECK(contains(dgs_last_error(NULL), missing), "names the package: %s", dgs_last_error(NULL));

  char corrupt[1100];
  snprintf(corrupt, sizeof corrupt, "%s/packages/corrupt.dgs", fixtures);
  dgs_options options;
  dgs_options_init(&options);
  options.backend = "test-mean";
  CHECK(dgs_detector_create(corrupt, &options, &detector) == DGS_MODEL_PACKAGE, "%s", dgs_last_error(NULL));
  CHECK(contains(dgs_last_error(NULL), corrupt), "names the package: %s", dgs_last_error(NULL));

  options.backend = "onnxruntime";
  CHECK(dgs_detector_create(clip, &options, &detector) == DGS_BACKEND_UNAVAILABLE, "%s", dgs_last_error(NULL));
  CHECK(contains(dgs_last_error(NULL), "Python SDK"), "%s", dgs_last_error(NULL));

  options.backend = "test-mean";
  options.precision = "fp17";
  CHECK(dgs_detector_create(clip, &options, &detector) == DGS_INVALID_ARGUMENT, "%s", dgs_last_error(NULL));
  CHECK(contains(dgs_last_error(NULL), "fp17"), "%s", dgs_last_error(NULL));
  options.precision = "int8";
  CHECK(dgs_detector_create(clip, &options, &detector) == DGS_MODEL_PACKAGE, "%s", dgs_last_error(NULL));
  options.precision = NULL;
  options.batch_size = -1;
  CHECK(dgs_detector_create(clip, &options, &detector) == DGS_INVALID_ARGUMENT, "%s", dgs_last_error(NULL));
  options.batch_size = 0;
  options.threshold = 2.0;
  CHECK(dgs_detector_create(clip, &options, &detector) == DGS_INVALID_ARGUMENT, "%s", dgs_last_error(NULL));

  CHECK(dgs_detector_create(NULL, NULL, &detector) == DGS_INVALID_ARGUMENT, "NULL path");
  CHECK(contains(dgs_last_error(NULL), "package_path"), "%s", dgs_last_error(NULL));
  CHECK(dgs_detector_create(clip, NULL, NULL) == DGS_INVALID_ARGUMENT, "NULL out");
  dgs_detector_destroy(NULL);
}

static void* fail_elsewhere(void* path) {
  dgs_detector* detector = NULL;
  dgs_detector_create((const char*)path, NULL, &detector);
  return (void*)(dgs_last_error(NULL)[0] != '\0' ? (void*)1 : NULL);
}

static void test_create_error_is_per_thread(void) {
  dgs_detector* detector = NULL;
  dgs_detector_create("/nonexistent/here.dgs", NULL, &detector);
  CHECK(contains(dgs_last_error(NULL), "/nonexistent/here.dgs"), "%s", dgs_last_error(NULL));
  pthread_t thread;
  void* had_error = NULL;
  pthread_create(&thread, NULL, fail_elsewhere, (void*)"/nonexistent/there.dgs");
  pthread_join(thread, &had_error);
  CHECK(had_error != NULL, "the other thread saw its own error");
  CHECK(contains(dgs_last_error(NULL), "/nonexistent/here.dgs"), "this thread's error was kept: %s",
        dgs_last_error(NULL));
}

static void test_properties(void) {
  dgs_detector* detector = open_clip(0);
  CHECK(fabs(dgs_detector_threshold(detector) - 0.55) < 1e-12, "%g", dgs_detector_threshold(detector));
  CHECK(strcmp(dgs_detector_backend(detector), "test-mean") == 0, "%s", dgs_detector_backend(detector));
  CHECK(strcmp(dgs_detector_precision(detector), "fp32") == 0, "%s", dgs_detector_precision(detector));
  CHECK(dgs_detector_input_size(detector) == 64, "%d", dgs_detector_input_size(detector));
  CHECK(strcmp(dgs_last_error(detector), "") == 0, "%s", dgs_last_error(detector));
  CHECK(isnan(dgs_detector_threshold(NULL)), "NULL threshold");
  CHECK(strcmp(dgs_detector_backend(NULL), "") == 0 && dgs_detector_input_size(NULL) == 0, "NULL detector");
  dgs_detector_destroy(detector);
}

static void test_files(const expected_file* files, size_t n) {
  for (int batch = 1; batch <= 4; batch += 3) {
    dgs_detector* detector = open_clip(batch);
    const char* paths[MAX_FILES];
    dgs_result results[MAX_FILES];
    for (size_t i = 0; i < n; ++i) paths[i] = files[i].path;
    CHECK(dgs_detect_files(detector, paths, n, results) == DGS_OK, "%s", dgs_last_error(detector));
    for (size_t i = 0; i < n; ++i) check_result(detector, i, &results[i], &files[i], files[i].path);
    CHECK(strcmp(dgs_result_error(detector, n), "") == 0, "past the end");
    CHECK(strcmp(dgs_result_error(NULL, 0), "") == 0, "NULL detector");
    dgs_detector_destroy(detector);
  }
}

static void test_encoded(const expected_file* files, size_t n) {
  dgs_detector* detector = open_clip(3);
  const uint8_t* data[MAX_FILES];
  size_t sizes[MAX_FILES];
  dgs_result results[MAX_FILES];
  expected_file kept[MAX_FILES];
  size_t count = 0;
  for (size_t i = 0; i < n; ++i) {
    struct stat st;
    if (stat(files[i].path, &st) != 0 || S_ISDIR(st.st_mode)) continue; /* x.jpg is a folder: it has no bytes */
    size_t size = 0;
    unsigned char* bytes = read_file(files[i].path, &size);
    if (!bytes) continue;
    data[count] = bytes;
    sizes[count] = size;
    kept[count++] = files[i];
  }
  CHECK(dgs_detect_encoded(detector, data, sizes, count, results) == DGS_OK, "%s", dgs_last_error(detector));
  for (size_t i = 0; i < count; ++i) {
    char name[32];
    snprintf(name, sizeof name, "<bytes #%zu>", i);
    check_result(detector, i, &results[i], &kept[i], name);
    free((void*)data[i]);
  }
  dgs_detector_destroy(detector);
}

static void test_rgb(void) {
  char name[1024], line[1024];
  snprintf(name, sizeof name, "%s/expected_rgb.tsv", fixtures);
  FILE* in = fopen(name, "r");
  CHECK(in != NULL, "cannot read %s", name);
  if (!in) return;
  dgs_detector* detector = open_clip(2);
  dgs_image images[8];
  expected_file want[8];
  unsigned char* buffers[8];
  size_t n = 0;
  while (n < 8 && fgets(line, sizeof line, in)) {
    char file[512];
    int width = 0, height = 0;
    double probability = 0;
    if (sscanf(line, "%511[^\t]\t%d\t%d\t%lf", file, &width, &height, &probability) != 4) continue;
    char path[1100];
    snprintf(path, sizeof path, "%s/rgb/%s", fixtures, file);
    size_t size = 0;
    unsigned char* pixels = read_file(path, &size);
    CHECK(pixels && size == (size_t)width * height * 3, "%s", path);
    if (!pixels) continue;
    /* Rows padded to a wider stride, as a camera's buffer may be. */
    size_t stride = (size_t)width * 3 + 7;
    buffers[n] = calloc(stride * height, 1);
    for (int y = 0; y < height; ++y) memcpy(buffers[n] + y * stride, pixels + (size_t)y * width * 3, width * 3);
    free(pixels);
    images[n] = (dgs_image){buffers[n], width, height, stride};
    want[n] = (expected_file){"", probability, "ok", 0};
    ++n;
  }
  fclose(in);
  CHECK(n >= 2, "too few raw images in %s", name);
  dgs_result results[8];
  CHECK(dgs_detect_rgb(detector, images, n, results) == DGS_OK, "%s", dgs_last_error(detector));
  for (size_t i = 0; i < n; ++i) {
    char label[32];
    snprintf(label, sizeof label, "<rgb #%zu>", i);
    check_result(detector, i, &results[i], &want[i], label);
  }
  /* A zero-sized image is an error row that does not stop the others. */
  images[0].width = 0;
  CHECK(dgs_detect_rgb(detector, images, n, results) == DGS_OK, "%s", dgs_last_error(detector));
  CHECK(results[0].status != DGS_OK, "zero width scored");
  CHECK(starts_with(dgs_result_error(detector, 0), "<rgb #0>: "), "%s", dgs_result_error(detector, 0));
  CHECK(results[1].status == DGS_OK, "%s", dgs_result_error(detector, 1));
  for (size_t i = 0; i < n; ++i) free(buffers[i]);
  dgs_detector_destroy(detector);
}

static void test_null_arguments(const expected_file* files) {
  dgs_detector* detector = open_clip(0);
  dgs_result results[2];
  const char* paths[2] = {files[0].path, NULL};
  CHECK(dgs_detect_files(NULL, paths, 1, results) == DGS_INVALID_ARGUMENT, "NULL detector");
  CHECK(contains(dgs_last_error(NULL), "detector is NULL"), "%s", dgs_last_error(NULL));
  CHECK(dgs_detect_files(detector, NULL, 1, results) == DGS_INVALID_ARGUMENT, "NULL paths");
  CHECK(contains(dgs_last_error(detector), "paths"), "%s", dgs_last_error(detector));
  CHECK(dgs_detect_files(detector, paths, 1, NULL) == DGS_INVALID_ARGUMENT, "NULL results");
  CHECK(contains(dgs_last_error(detector), "results"), "%s", dgs_last_error(detector));
  CHECK(dgs_detect_files(detector, paths, 2, results) == DGS_INVALID_ARGUMENT, "a NULL path");
  CHECK(contains(dgs_last_error(detector), "paths[1]"), "%s", dgs_last_error(detector));
  CHECK(results[0].status == DGS_INVALID_ARGUMENT && results[1].status == DGS_INVALID_ARGUMENT, "rows say why");
  CHECK(strcmp(dgs_result_error(detector, 0), dgs_last_error(detector)) == 0 &&
            strcmp(dgs_result_error(detector, 1), dgs_last_error(detector)) == 0,
        "each row of a call that could not run has the call's message: %s", dgs_result_error(detector, 1));
  CHECK(dgs_detect_encoded(detector, NULL, NULL, 0, NULL) == DGS_OK, "nothing to do");
  CHECK(strcmp(dgs_last_error(detector), "") == 0, "a call with nothing to do clears the last error: %s",
        dgs_last_error(detector));
  const uint8_t* data[1] = {NULL};
  size_t sizes[1] = {5};
  CHECK(dgs_detect_encoded(detector, data, NULL, 1, results) == DGS_INVALID_ARGUMENT, "NULL sizes");
  CHECK(dgs_detect_encoded(detector, data, sizes, 1, results) == DGS_INVALID_ARGUMENT, "NULL data[0]");
  CHECK(contains(dgs_last_error(detector), "data[0]"), "%s", dgs_last_error(detector));
  dgs_image image = {NULL, 4, 4, 0};
  CHECK(dgs_detect_rgb(detector, &image, 1, results) == DGS_INVALID_ARGUMENT, "NULL pixels");
  CHECK(dgs_detect_rgb(detector, NULL, 1, results) == DGS_INVALID_ARGUMENT, "NULL images");
  /* A call that runs clears the last error. */
  CHECK(dgs_detect_files(detector, paths, 1, results) == DGS_OK, "%s", dgs_last_error(detector));
  CHECK(strcmp(dgs_last_error(detector), "") == 0, "%s", dgs_last_error(detector));
  dgs_detector_destroy(detector);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s <fixtures folder>\n", argv[0]);
    return 2;
  }
  snprintf(fixtures, sizeof fixtures, "%s", argv[1]);
  snprintf(clip, sizeof clip, "%s/packages/clip.dgs", fixtures);
  expected_file files[MAX_FILES];
  size_t n = read_expected(files);
  CHECK(n >= 10, "only %zu expected files", n);

  test_version_and_statuses();
  test_create_failures();
  test_create_error_is_per_thread();
  test_properties();
  test_files(files, n);
  test_encoded(files, n);
  test_rgb();
  test_null_arguments(files);

  if (failures) {
    fprintf(stderr, "%d checks failed\n", failures);
    return 1;
  }
  printf("C API: all checks passed (%zu files)\n", n);
  return 0;
}
