/* Uses the installed libdgs through its C API: the version, and the error a missing package gives.
 *
 *     consumer [<folder that holds no missing.dgs>]
 */
#include <dgs/dgs.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char** argv) {
  const char* version = dgs_version();
  if (!version || !*version) {
    fprintf(stderr, "dgs_version() is empty\n");
    return 1;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/missing.dgs", argc > 1 ? argv[1] : ".");
  dgs_detector* detector = (dgs_detector*)path; /* anything but NULL: a failed create sets it to NULL */
  dgs_status status = dgs_detector_create(path, NULL, &detector);
  const char* error = dgs_last_error(NULL);
  if (status != DGS_MODEL_PACKAGE || detector != NULL || !strstr(error, path)) {
    fprintf(stderr, "dgs_detector_create(%s): %s (%s), expected model_package naming the file\n", path,
            dgs_status_string(status), error);
    return 1;
  }
  printf("libdgs %s: %s: %s\n", version, dgs_status_string(status), error);
  return 0;
}
