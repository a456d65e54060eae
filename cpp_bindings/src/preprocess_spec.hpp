// PreprocessSpec from a manifest's parsed "preprocess" object (package.cpp), as PreprocessSpec.from_dict.
#pragma once

#include "dgs/preprocess.hpp"
#include "strict_json.hpp"

namespace dgs {

// The spec an object describes; throws json::Invalid with PreprocessSpec.from_dict's wording (unknown keys,
// exact types, bounds).
PreprocessSpec preprocess_spec_from_json(const json::Json& object);

// PreprocessSpec.to_dict(): patch_size and small_images only for patch-select.
json::Json preprocess_spec_to_json(const PreprocessSpec& spec);

}  // namespace dgs
