// Internals of preprocess.cpp that its tests check directly.
#pragma once

#include <opencv2/core.hpp>

namespace dgs::detail {

// The grey values patch_entropies works on (CV_64F, 0..1), computed as it computes them: cv::transform's of the
// float64 image with (0.299, 0.587, 0.114) / 255 (dgs_sdk's _gray) up to the last bit.
cv::Mat grey_image(const cv::Mat& rgb);

}  // namespace dgs::detail
